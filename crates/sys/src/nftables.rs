//! A long-lived libnftables context: the library behind the `nft` program,
//! loaded at run time (`libnftables.so.1`, Debian package `libnftables1`, which
//! `nftables` depends on), so nothing is needed at build time and a machine
//! without it falls back to running `nft`.
//!
//! Why not a process per batch: `nft` opens a netlink socket, and closing it after
//! a batch that deleted anything (a flushed chain) waits in the kernel for the
//! deleted rules to be freed after an RCU grace period: 8–15 ms here, more than the
//! batch itself. A context kept open keeps its socket, so a batch costs what the
//! kernel commit costs, and nft's cache of the ruleset is refreshed only when the
//! ruleset's generation changed.
//!
//! The context belongs to the network namespace of the thread that opened it.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};

/// `NFT_CTX_OUTPUT_JSON`: JSON output, and JSON input accepted.
const OUTPUT_JSON: c_uint = 1 << 4;
const LIBRARY: &CStr = c"libnftables.so.1";

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxInt = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxSetFlags = unsafe extern "C" fn(*mut c_void, c_uint);
type CtxBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// The library's entry points we use.
struct Api {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    buffer_output: CtxInt,
    buffer_error: CtxInt,
    set_output_flags: CtxSetFlags,
    output_buffer: CtxBuffer,
    error_buffer: CtxBuffer,
    run_cmd: RunCmd,
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by libc, valid
    // until the next dl* call on this thread; it is copied at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: non-null and NUL-terminated (see above).
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

impl Api {
    fn load() -> Result<Api, String> {
        // SAFETY: dlopen with a constant NUL-terminated name. The handle is never
        // closed: the library stays loaded for the life of the process, so the
        // function pointers taken from it stay valid.
        let handle = unsafe { libc::dlopen(LIBRARY.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!(
                "cannot load {} (apt-get install libnftables1): {}",
                LIBRARY.to_string_lossy(),
                dl_error()
            ));
        }
        let sym = |name: &CStr| -> Result<*mut c_void, String> {
            // SAFETY: a valid handle from dlopen and a NUL-terminated name.
            let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
            if p.is_null() {
                Err(format!(
                    "{} has no {}: {}",
                    LIBRARY.to_string_lossy(),
                    name.to_string_lossy(),
                    dl_error()
                ))
            } else {
                Ok(p)
            }
        };
        // SAFETY (each transmute): the symbol is the libnftables function of that
        // name, whose C prototype in <nftables/libnftables.h> is the type it is
        // cast to: struct nft_ctx * is an opaque pointer, bool/unsigned int/int
        // as declared.
        unsafe {
            Ok(Api {
                ctx_new: std::mem::transmute::<*mut c_void, CtxNew>(sym(c"nft_ctx_new")?),
                ctx_free: std::mem::transmute::<*mut c_void, CtxFree>(sym(c"nft_ctx_free")?),
                buffer_output: std::mem::transmute::<*mut c_void, CtxInt>(sym(
                    c"nft_ctx_buffer_output",
                )?),
                buffer_error: std::mem::transmute::<*mut c_void, CtxInt>(sym(
                    c"nft_ctx_buffer_error",
                )?),
                set_output_flags: std::mem::transmute::<*mut c_void, CtxSetFlags>(sym(
                    c"nft_ctx_output_set_flags",
                )?),
                output_buffer: std::mem::transmute::<*mut c_void, CtxBuffer>(sym(
                    c"nft_ctx_get_output_buffer",
                )?),
                error_buffer: std::mem::transmute::<*mut c_void, CtxBuffer>(sym(
                    c"nft_ctx_get_error_buffer",
                )?),
                run_cmd: std::mem::transmute::<*mut c_void, RunCmd>(sym(
                    c"nft_run_cmd_from_buffer",
                )?),
            })
        }
    }
}

/// What a failed command printed on nft's error stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftFailure(pub String);

impl std::fmt::Display for NftFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NftFailure {}

/// One libnftables context, with its output and errors captured in buffers.
pub struct Session {
    api: Api,
    ctx: *mut c_void,
}

// SAFETY: the context is only touched through `&mut self` (one thread at a time);
// libnftables keeps no thread-local state for it.
unsafe impl Send for Session {}

impl Session {
    /// Loads the library and opens a context in the calling thread's network
    /// namespace. Fails with a message naming the library when it is missing.
    pub fn open() -> Result<Session, String> {
        let api = Api::load()?;
        // SAFETY: nft_ctx_new(NFT_CTX_DEFAULT) has no preconditions; NULL is
        // checked.
        let ctx = unsafe { (api.ctx_new)(0) };
        if ctx.is_null() {
            return Err("nft_ctx_new failed".to_string());
        }
        // SAFETY: a live context; both calls only switch its streams to buffers.
        let (o, e) = unsafe { ((api.buffer_output)(ctx), (api.buffer_error)(ctx)) };
        let session = Session { api, ctx };
        if o != 0 || e != 0 {
            return Err("libnftables: cannot buffer output".to_string());
        }
        Ok(session)
    }

    /// Runs `commands` (nft's language, or a JSON document when `json`) as one
    /// transaction. Returns what it printed (listings), or what it printed on its
    /// error stream.
    pub fn run(&mut self, commands: &str, json: bool) -> Result<String, NftFailure> {
        let text = CString::new(commands)
            .map_err(|_| NftFailure("the commands contain a NUL byte".to_string()))?;
        // SAFETY: a live context. Reading the buffers first empties them (the
        // library rewinds them), so what is read after the run is this run's.
        // The returned pointers are NUL-terminated and owned by the context,
        // valid until its next call: they are copied before that.
        unsafe {
            (self.api.set_output_flags)(self.ctx, if json { OUTPUT_JSON } else { 0 });
            (self.api.output_buffer)(self.ctx);
            (self.api.error_buffer)(self.ctx);
            let rc = (self.api.run_cmd)(self.ctx, text.as_ptr());
            let out = copy((self.api.output_buffer)(self.ctx));
            let err = copy((self.api.error_buffer)(self.ctx));
            if rc == 0 {
                Ok(out)
            } else if err.trim().is_empty() {
                Err(NftFailure(format!("nft failed (code {rc})")))
            } else {
                Err(NftFailure(err.trim().to_string()))
            }
        }
    }
}

/// Copies a buffer the library returned (NULL reads as empty).
///
/// # Safety
/// `p` is NULL or NUL-terminated and valid for the duration of the call.
unsafe fn copy(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: as the caller promises.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: the context is live and freed once; nothing uses it after.
        unsafe { (self.api.ctx_free)(self.ctx) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own in a new, empty network namespace (the
    /// namespace goes away with the thread), so the test touches no real table.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            // SAFETY: unshare only changes this thread's namespace (threads do
            // not share CLONE_NEWNET membership); no pointers involved.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET) needs root: {}",
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .expect("test thread")
    }

    #[test]
    fn runs_text_and_json_lists_and_reports_errors() {
        in_new_netns(|| {
            let mut s = Session::open().expect("libnftables1 is installed");
            s.run(
                "add table ip t\nadd chain ip t c\nadd rule ip t c tcp dport 22 accept",
                false,
            )
            .expect("text batch");
            s.run(
                r#"{"nftables": [{"add": {"set": {"family": "ip", "table": "t", "name": "s", "type": "ipv4_addr"}}}]}"#,
                true,
            )
            .expect("JSON batch");
            let listing = s.run("list table ip t", true).expect("list");
            assert!(listing.contains(r#""dport""#), "{listing}");
            assert!(listing.contains(r#""name": "s""#) || listing.contains(r#""name":"s""#));
            // A bad command says what is wrong; nothing of its batch is applied.
            // (libnftables points at the right columns but may quote another
            // line of a multi-line buffer, so only the message is checked.)
            let err = s
                .run(
                    "add rule ip t c tcp dport 23 accept\nadd rule ip t nochain accept",
                    false,
                )
                .expect_err("no such chain");
            assert!(
                err.0.contains("Could not process rule: No such file"),
                "{err}"
            );
            let text = s.run("list chain ip t c", false).expect("list");
            assert!(text.contains("dport 22"), "{text}");
            assert!(!text.contains("dport 23"), "the batch is atomic: {text}");
            // A listing that prints nothing after one that printed is empty, not
            // the old text.
            let empty = s.run("add table ip t", false).expect("no-op");
            assert_eq!(empty, "");
        });
    }

    #[test]
    fn a_missing_table_is_enoent() {
        in_new_netns(|| {
            let mut s = Session::open().expect("libnftables1 is installed");
            let err = s.run("list table ip absent", true).expect_err("absent");
            assert!(err.0.contains("No such file or directory"), "{err}");
        });
    }
}
