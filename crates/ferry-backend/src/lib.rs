//! ferry-backend
