"""What crosses between daemons, and from the tools to a daemon, over gRPC.

- ``mosix_pb2*``: generated from ``proto/mosix.proto`` (regenerate with
  ``python -m mosixd.wire.regenerate``; a test checks they are up to date);
- ``codec``: conversions between the core types and the messages;
- ``auth``: the cluster key and the credentials every call carries.

May import: ``mosixd.core``, grpc and protobuf.
"""
