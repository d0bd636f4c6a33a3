// anogan-inspect sample client in C++: checks the server's health, streams frames over
// StreamInspect (one writer thread, results read as they come), prints one line per
// verdict and a summary. Exits 1 when a frame is unanswered, answered twice or out of
// order, or the stream ends with an error; 2 on bad arguments or input.
//
//   anogan-client-cpp --target localhost:50051 --csv data/mnist_test.csv.gz \
//       --normal-labels 7,8 --anomaly-labels 2
//   anogan-client-cpp --target localhost:50051 --folder frames/   (PNG/JPEG files; in an
//       MVTec-style folder, good/ holds normal frames and any other subfolder anomalies)
#include <grpcpp/grpcpp.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "anogan/v1/inspection.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace fs = std::filesystem;
namespace pb = anogan::v1;

namespace {

const char kUsage[] =
    "usage: anogan-client-cpp --target HOST:PORT (--csv FILE[.gz] | --folder DIR)\n"
    "         [--normal-labels 7,8 --anomaly-labels 2] [--mode fast|search|cascade]\n"
    "         [--model NAME] [--limit N] [--token TOKEN] [--quiet]\n";

struct Options {
  std::string target, csv, folder, model, token;
  std::set<int> normal, anomaly;
  pb::Mode mode = pb::MODE_UNSPECIFIED;  // the server's default (cascade)
  long limit = -1;
  bool quiet = false;
};

// One frame to send: raw 8-bit pixels (CSV) or an encoded file (folder).
struct Input {
  std::string id, bytes;
  bool raw = false;
  int height = 0, width = 0;
  std::optional<bool> anomaly;  // known when the source is labelled
};

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "anogan-client-cpp: " << message << "\n" << kUsage;
  std::exit(2);
}

// What CSV cells, labels and --limit must be: digits only (no sign, space or exponent).
bool is_integer(const std::string& text) {
  return !text.empty() && text.size() < 10 &&
         std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c); });
}

std::set<int> parse_labels(const std::string& text) {
  std::set<int> labels;
  std::stringstream stream(text + ",");  // so that a trailing empty item is seen
  std::string item;
  while (std::getline(stream, item, ',')) {
    if (!is_integer(item)) usage_error("labels are comma-separated integers: " + text);
    labels.insert(std::stoi(item));
  }
  return labels;
}

Options parse_args(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (arg == "--quiet") {
      options.quiet = true;
      continue;
    }
    if (i + 1 >= argc) usage_error(arg + " needs a value");
    std::string value = argv[++i];
    if (arg == "--target") options.target = value;
    else if (arg == "--csv") options.csv = value;
    else if (arg == "--folder") options.folder = value;
    else if (arg == "--model") options.model = value;
    else if (arg == "--token") options.token = value;
    else if (arg == "--normal-labels") options.normal = parse_labels(value);
    else if (arg == "--anomaly-labels") options.anomaly = parse_labels(value);
    else if (arg == "--limit") {
      if (!is_integer(value)) usage_error("--limit is a count of frames: " + value);
      options.limit = std::stol(value);
    }
    else if (arg == "--mode") {
      static const std::map<std::string, pb::Mode> modes = {
          {"fast", pb::MODE_FAST}, {"search", pb::MODE_SEARCH}, {"cascade", pb::MODE_CASCADE}};
      auto found = modes.find(value);
      if (found == modes.end()) usage_error("--mode is fast, search or cascade");
      options.mode = found->second;
    } else {
      usage_error("unknown option " + arg);
    }
  }
  if (options.target.empty()) usage_error("--target is required");
  if (options.csv.empty() == options.folder.empty()) usage_error("give --csv or --folder");
  return options;
}

// MNIST-style CSV (label, then a square image's pixels 0..255), gzip or plain.
std::vector<Input> read_csv(const Options& options) {
  gzFile file = gzopen(options.csv.c_str(), "rb");
  if (file == nullptr) throw std::runtime_error(options.csv + ": cannot open");
  std::vector<Input> inputs;
  std::string line;
  std::vector<char> buffer(1 << 16);
  long row = 0;
  bool labelled = !options.normal.empty() || !options.anomaly.empty();
  while (options.limit < 0 || static_cast<long>(inputs.size()) < options.limit) {
    line.clear();  // one line, however long, in buffer-sized pieces
    while (gzgets(file, buffer.data(), static_cast<int>(buffer.size())) != nullptr) {
      line += buffer.data();
      if (!line.empty() && line.back() == '\n') break;
    }
    int error = Z_OK;
    const char* message = gzerror(file, &error);  // gzgets returns NULL on a fault too
    if (error != Z_OK) {
      std::string fault = message;
      gzclose(file);
      throw std::runtime_error(fault);  // zlib's message names the file
    }
    if (line.empty()) break;
    ++row;
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    if (line.empty()) continue;
    if (row == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);  // a UTF-8 BOM
    if (row == 1 && !std::isdigit(static_cast<unsigned char>(line[0]))) continue;  // header
    std::vector<int> values;
    std::stringstream stream(line + ",");  // so that a trailing empty cell is seen
    std::string cell;
    while (std::getline(stream, cell, ',')) {
      if (!is_integer(cell) || (!values.empty() && std::stoi(cell) > 255)) {
        gzclose(file);
        throw std::runtime_error(options.csv + ", row " + std::to_string(row) +
                                 ": not an integer label or pixel 0..255: '" + cell + "'");
      }
      values.push_back(std::stoi(cell));
    }
    int side = 0;
    while ((side + 1) * (side + 1) <= static_cast<int>(values.size()) - 1) ++side;
    if (values.size() < 2 || side * side != static_cast<int>(values.size()) - 1) {
      gzclose(file);
      throw std::runtime_error(options.csv + ", row " + std::to_string(row) + ": " +
                               std::to_string(values.size() - 1) +
                               " pixels, not a square image");
    }
    int label = values[0];
    if (labelled && !options.normal.count(label) && !options.anomaly.count(label)) continue;
    Input input;
    input.id = "csv-row-" + std::to_string(row) + "-label-" + std::to_string(label);
    input.raw = true;
    input.height = input.width = side;
    input.bytes.reserve(values.size() - 1);
    for (size_t k = 1; k < values.size(); ++k) input.bytes.push_back(static_cast<char>(values[k]));
    if (labelled) input.anomaly = options.anomaly.count(label) > 0;
    inputs.push_back(std::move(input));
  }
  gzclose(file);
  return inputs;
}

// PNG/JPEG files, sorted by path; sent encoded (the server decodes them).
std::vector<Input> read_folder(const Options& options) {
  if (!fs::is_directory(options.folder)) throw std::runtime_error(options.folder + ": not a folder");
  std::vector<fs::path> paths;
  for (const auto& entry : fs::recursive_directory_iterator(options.folder)) {
    std::string ext = entry.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
    if (entry.is_regular_file() && (ext == ".png" || ext == ".jpg" || ext == ".jpeg"))
      paths.push_back(entry.path());
  }
  std::sort(paths.begin(), paths.end());
  std::vector<Input> inputs;
  for (const auto& path : paths) {
    if (options.limit >= 0 && static_cast<long>(inputs.size()) >= options.limit) break;
    std::ifstream file(path, std::ios::binary);
    Input input;
    input.id = fs::relative(path, options.folder).string();
    input.bytes.assign(std::istreambuf_iterator<char>(file), {});
    auto parts = fs::relative(path, options.folder);
    if (std::distance(parts.begin(), parts.end()) > 1) input.anomaly = *parts.begin() != "good";
    inputs.push_back(std::move(input));
  }
  return inputs;
}

// Area under the ROC curve of scores against labels (Mann-Whitney, ties count half).
std::optional<double> auroc(const std::vector<std::pair<double, bool>>& scored) {
  std::vector<std::pair<double, bool>> sorted = scored;
  std::sort(sorted.begin(), sorted.end());
  double rank_sum = 0, positives = 0;
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i;
    while (j < sorted.size() && sorted[j].first == sorted[i].first) ++j;
    double rank = (i + 1 + j) / 2.0;  // mean of ranks i+1..j
    for (size_t k = i; k < j; ++k)
      if (sorted[k].second) rank_sum += rank, positives += 1;
    i = j;
  }
  double negatives = sorted.size() - positives;
  if (positives == 0 || negatives == 0) return std::nullopt;
  return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives);
}

// gRPC status codes by number, as google.rpc.Status carries them.
const char* code_name(int code) {
  static const char* const names[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
      "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? names[code] : "UNKNOWN_CODE";
}

void authorize(grpc::ClientContext& context, const Options& options) {
  if (!options.token.empty()) context.AddMetadata("authorization", "Bearer " + options.token);
}

bool serving(const std::shared_ptr<grpc::Channel>& channel, const Options& options) {
  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  context.set_wait_for_ready(true);
  authorize(context, options);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("anogan.v1.InspectionService");
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = health->Check(&context, request, &response);
  if (!status.ok()) {
    std::cerr << "health check failed: " << status.error_message() << "\n";
    return false;
  }
  if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    std::cerr << "server is not serving (health "
              << grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status())
              << ")\n";
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options options = parse_args(argc, argv);
  std::vector<Input> inputs;
  try {
    inputs = options.csv.empty() ? read_folder(options) : read_csv(options);
  } catch (const std::exception& err) {
    std::cerr << "anogan-client-cpp: " << err.what() << "\n";
    return 2;
  }
  if (inputs.empty()) {
    std::cerr << "anogan-client-cpp: no frames to send\n";
    return 2;
  }

  auto channel = grpc::CreateChannel(options.target, grpc::InsecureChannelCredentials());
  if (!serving(channel, options)) return 1;
  auto stub = pb::InspectionService::NewStub(channel);
  grpc::ClientContext context;
  authorize(context, options);
  auto stream = stub->StreamInspect(&context);
  auto started = std::chrono::steady_clock::now();

  // Writer: the config, then every frame; Write blocks under HTTP/2 flow control, which is
  // how the server's --stream-window window reaches us.
  std::thread writer([&] {
    pb::StreamInspectRequest request;
    request.mutable_config()->set_model(options.model);
    request.mutable_config()->set_mode(options.mode);
    if (!stream->Write(request)) return;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Input& input = inputs[i];
      request.Clear();
      pb::Frame* frame = request.mutable_frame();
      frame->set_frame_id(input.id);
      frame->set_sequence(static_cast<int64_t>(i));
      auto now = std::chrono::system_clock::now().time_since_epoch();
      auto nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(now).count();
      frame->mutable_capture_time()->set_seconds(nanos / 1000000000);
      frame->mutable_capture_time()->set_nanos(static_cast<int32_t>(nanos % 1000000000));
      if (input.raw) {
        pb::RawImage* raw = frame->mutable_raw();
        raw->set_data(input.bytes);
        raw->set_data_type(pb::DATA_TYPE_UINT8);
        raw->set_height(input.height);
        raw->set_width(input.width);
        raw->set_channels(1);
      } else {
        frame->mutable_encoded()->set_data(input.bytes);
      }
      if (!stream->Write(request)) return;  // the stream ended: its status says why
    }
    stream->WritesDone();
  });

  // Reader: exactly one final result per frame, in the order sent.
  long answered = 0, errors = 0, passed = 0, failed = 0, problems = 0;
  std::vector<std::pair<double, bool>> scored;
  pb::StreamInspectResponse response;
  while (stream->Read(&response)) {
    std::vector<const pb::InspectionResult*> results;
    if (response.has_result()) results.push_back(&response.result());
    for (const auto& result : response.results()) results.push_back(&result);
    for (const pb::InspectionResult* result : results) {
      if (result->provisional()) continue;  // only when the config asks for them
      if (answered >= static_cast<long>(inputs.size()) || result->sequence() != answered) {
        std::cerr << "out of order: result for sequence " << result->sequence()
                  << " where " << answered << " was due\n";
        ++problems;
        continue;
      }
      const Input& input = inputs[answered++];
      if (result->frame_id() != input.id) {
        std::cerr << "result " << result->sequence() << " names frame '" << result->frame_id()
                  << "', not '" << input.id << "'\n";
        ++problems;
      }
      if (result->has_error()) {  // a per-frame error: google.rpc.Status, the stream goes on
        ++errors;
        if (!options.quiet)
          std::cout << result->sequence() << " " << input.id << " error code "
                    << result->error().code() << " " << code_name(result->error().code())
                    << ": " << result->error().message() << "\n";
        continue;
      }
      bool fail = result->verdict() == pb::VERDICT_FAIL;
      (fail ? failed : passed) += 1;
      if (input.anomaly) scored.emplace_back(result->score(), *input.anomaly);
      if (!options.quiet)
        std::cout << result->sequence() << " " << input.id << " " << pb::Verdict_Name(result->verdict())
                  << " score " << result->score() << " threshold " << result->threshold() << " "
                  << pb::Stage_Name(result->stage()) << "\n";
    }
  }
  writer.join();
  grpc::Status status = stream->Finish();
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  long missing = static_cast<long>(inputs.size()) - answered;
  std::printf("frames %zu answered %ld missing %ld out_of_order %ld errors %ld pass %ld fail %ld",
              inputs.size(), answered, missing, problems, errors, passed, failed);
  if (auto area = auroc(scored)) std::printf(" auroc %.4f", *area);
  std::printf(" seconds %.2f\n", seconds);
  if (!status.ok()) {
    std::cerr << "stream ended with " << status.error_code() << " "
              << code_name(status.error_code()) << ": " << status.error_message() << "\n";
    return 1;
  }
  return (missing == 0 && problems == 0) ? 0 : 1;
}
