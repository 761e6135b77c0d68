//! The client's commands, one file each: what each asks of the hub and what it answers.
//! Each is a method of [`Core`](super::core::Core) and does no I/O; the work that awaits
//! (attaching channels to the broker, handing a publication or an application frame over)
//! is returned as a [`Step`](super::core::Step) for the connection's task.

pub(crate) mod authenticate;
pub(crate) mod forward;
pub(crate) mod publish;
pub(crate) mod subscribe;
pub(crate) mod unsubscribe;
