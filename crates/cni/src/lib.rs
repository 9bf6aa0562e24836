//! Tabby's CNI plugins, `tabby` (the main plugin: veth, routes, WorkloadEndpoint)
//! and `tabby-ipam` (block IPAM from the datastore), Calico's `calico` and
//! `calico-ipam`. They speak CNI spec 1.1 (ADD, DEL, CHECK, STATUS, GC, VERSION)
//! and answer callers of 0.3.0 to 1.0.0 in their own result format.
//!
//! The parsing parts are pure: [`spec`] (wire types, error codes, versions),
//! [`config`] (the network configuration), [`env`] (CNI_* variables and
//! CNI_ARGS), [`naming`] (veth and endpoint names). The edges: [`delegate`]
//! (exec'ing another plugin), [`plugin`] and [`ipam_plugin`] (the commands) and
//! [`run`] (stdin, stdout, exit status).

pub mod config;
pub mod delegate;
pub mod env;
pub mod ipam_plugin;
pub mod naming;
pub mod plugin;
pub mod run;
pub mod spec;
pub mod store;

pub use spec::{CniError, CniResult, Command};
