//! Integration tests of the whole engine: the HTTP contract on an in-process server, and
//! `kill -9` of the real binary.

mod kill9;
mod walkthrough;
