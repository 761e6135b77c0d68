//! The two baselines the hub is measured against, run in the same harness:
//! - [`naive`]: what users write by hand with tokio-tungstenite and `tokio::sync::broadcast`;
//! - [`raw`]: a fan-out that encodes each frame once and writes the same bytes to every socket,
//!   batching writes: the practical limit on this machine.
//!
//! Both forward every text frame a client sends to every other client. [`blast`] is S12's
//! sender: it sends numbered frames to every reader, at a rate or as fast as it can.

pub(crate) mod blast;
pub(crate) mod naive;
pub(crate) mod raw;
