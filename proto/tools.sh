#!/usr/bin/env bash
# `make proto-tools`: the generators `make proto` runs for every language, and the
# toolchains the tests build the sample clients and the Go and Java stubs with.
# Debian's packages (bookworm: protoc 3.21.12, gRPC 1.51.1, protoc-gen-go 1.28.1,
# protoc-gen-go-grpc 1.33.3, grpc-java 1.41.3) and npm's (clients/ts/package-lock.json:
# protobuf-ts 2.11.1, @grpc/grpc-js, TypeScript). Installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(
  protobuf-compiler libprotobuf-dev                 # protoc and the well-known types
  protobuf-compiler-grpc libgrpc++-dev cmake g++ zlib1g-dev   # C++ stubs, clients/cpp
  protoc-gen-go protoc-gen-go-grpc golang-go        # Go stubs, and their compile check:
  golang-google-protobuf-dev golang-google-grpc-dev golang-google-genproto-dev
  protobuf-compiler-grpc-java-plugin default-jdk-headless   # Java stubs, compile check:
  libprotobuf-java libgrpc-java libgeronimo-annotation-1.3-spec-java
  nodejs npm                                        # TypeScript: clients/ts
)
# A machine may carry Node.js and npm outside Debian's packages (the development image does).
have_node=$(command -v node >/dev/null && command -v npm >/dev/null && echo yes || true)
missing=()
for package in "${PACKAGES[@]}"; do
  if [[ -n "$have_node" && ("$package" == nodejs || "$package" == npm) ]]; then
    continue
  fi
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if ((${#missing[@]})); then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  echo "proto-tools: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
# protobuf-ts's protoc plugin and the TypeScript client's dependencies, as locked.
if [ ! -x clients/ts/node_modules/.bin/protoc-gen-ts ] \
    || [ clients/ts/package-lock.json -nt clients/ts/node_modules/.package-lock.json ]; then
  (cd clients/ts && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "proto-tools: protoc $(protoc --version | cut -d' ' -f2), go $(go env GOVERSION)," \
  "javac $(javac -version 2>&1 | cut -d' ' -f2), node $(node --version), cmake" \
  "$(cmake --version | head -1 | cut -d' ' -f3)"
