//! errors (to be written)
