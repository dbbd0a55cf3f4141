//! Several replicas as one cache: which replica fetches a blob from the
//! upstream, so that a burst of cold pulls spread over all replicas costs
//! one upstream fetch per blob (see docs/design.md, "Several replicas").

pub mod rendezvous;
