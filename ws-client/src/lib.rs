//! The resilient client of the ws toolkit (filled in by issue 3).
