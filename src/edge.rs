//! edge (to be written)
