"""Generated protobuf/gRPC code for proto/mosix.proto (regenerate with
``python -m mosixd.wire.regenerate``; a test checks it is up to date)."""
