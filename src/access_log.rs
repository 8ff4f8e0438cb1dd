//! access_log (to be written)
