//! Integration tests: one binary; every test talks to a real node over HTTP.

mod access;
mod attacks;
mod browser;
mod bundles;
mod corpus;
mod crud;
mod demo;
mod docker;
mod durability;
mod errors;
mod federation;
mod feeds;
mod helpers;
mod multiprocess;
mod operations;
mod pathways;
mod profiles;
mod quality;
mod regress;
mod search;
mod validation;
mod views;
mod web;
mod webdriver;
