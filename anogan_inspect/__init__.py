"""Core of anogan-inspect shared by the trainer and the server.

Networks, preprocessing, the latent search (one implementation, batched and continuously
refillable) and the bundle format.
"""
