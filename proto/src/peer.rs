//! Node-to-node gRPC protocol.
