//! The router: which agent owns each conversation (in progress).
