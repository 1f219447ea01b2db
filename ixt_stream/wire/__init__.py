"""The only code that turns bytes into ixt-stream types and back.

Generated protobuf modules live in `ixt_stream/wire/ixt/v1/` (built from `protos/` by
`make proto`); nothing outside `wire/`, the gRPC servicer and its client imports them.
"""
