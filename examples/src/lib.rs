//! Runnable examples of the ws toolkit; see `examples/*.rs`.
