//! mock (to be written)
