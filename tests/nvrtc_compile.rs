//! Every `kernels/*.cu` compiles with NVRTC — the compiler the server uses at run time — where
//! libnvrtc is installed; otherwise the test prints "skipped: libnvrtc not found" and passes.
//!
//! Where libnvrtc is looked for, in order:
//!   1. `$CUDA_NVRTC_LIB` — the library file itself, or a directory holding `libnvrtc.so*`;
//!   2. Python's site-packages: `nvidia/cu13/lib` (the CUDA 13 wheels) and `nvidia/cuda_nvrtc/lib`
//!      (CUDA 12 wheels);
//!   3. `/usr/local/cuda/lib64`.
//!
//! CI (no GPU needed — NVRTC is a pure compiler):
//!   python3 -m pip install nvidia-cuda-nvrtc==13.0.88   # ~90 MB; puts nvidia/cu13/lib/libnvrtc.so.13
//!   cargo test --test nvrtc_compile -- --nocapture
//! Set `CLOISTER_REQUIRE_NVRTC=1` in that CI job so a missing library fails instead of skipping.
//!
//! The kernels get their headers in memory (`cloister::gpu::KERNEL_HEADERS`), exactly as the
//! runtime loader passes them, so a header missing from that list fails here too.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

use cloister::gpu::{KERNELS, KERNEL_HEADERS, NVRTC_OPTIONS};
use libloading::{Library, Symbol};

type Program = *mut c_void;
type CreateProgram = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileProgram = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int;
type GetSize = unsafe extern "C" fn(Program, *mut usize) -> c_int;
type GetBytes = unsafe extern "C" fn(Program, *mut c_char) -> c_int;
type DestroyProgram = unsafe extern "C" fn(*mut Program) -> c_int;
type Version = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;

fn nvrtc_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc.so"))
        })
        .collect();
    found.sort(); // libnvrtc.so before libnvrtc.so.13 — either is the same library
    found.into_iter().next()
}

/// `libnvrtc-builtins.so.X.Y` next to libnvrtc (not the `.alt` variant).
fn builtins_in(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
        })
}

fn python_site_dirs() -> Vec<PathBuf> {
    let script = "import site,sys;print('\\n'.join(site.getsitepackages()+[site.getusersitepackages()]+sys.path))";
    Command::new("python3")
        .args(["-c", script])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
}

fn find_nvrtc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CUDA_NVRTC_LIB").map(PathBuf::from) {
        if p.is_file() {
            return Some(p);
        }
        if let Some(f) = nvrtc_in(&p) {
            return Some(f);
        }
    }
    for site in python_site_dirs() {
        for sub in ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"] {
            if let Some(f) = nvrtc_in(&site.join(sub)) {
                return Some(f);
            }
        }
    }
    nvrtc_in(Path::new("/usr/local/cuda/lib64"))
}

fn check(code: c_int, what: &str) {
    assert_eq!(code, 0, "{what} failed with nvrtcResult {code}");
}

fn read(lib: &Library, name: &[u8], prog: Program) -> Vec<u8> {
    // SAFETY: the symbol names and signatures are NVRTC's documented C API
    // (nvrtcGet{ProgramLog,PTX}{Size,}); `prog` is a live program.
    unsafe {
        let (size_name, get_name): (&[u8], &[u8]) = match name {
            b"log" => (b"nvrtcGetProgramLogSize\0", b"nvrtcGetProgramLog\0"),
            _ => (b"nvrtcGetPTXSize\0", b"nvrtcGetPTX\0"),
        };
        let size_fn: Symbol<GetSize> = lib
            .get(size_name)
            .unwrap_or_else(|e| panic!("NVRTC symbol missing: {e}"));
        let get_fn: Symbol<GetBytes> = lib
            .get(get_name)
            .unwrap_or_else(|e| panic!("NVRTC symbol missing: {e}"));
        let mut n = 0usize;
        check(size_fn(prog, &mut n), "size query");
        let mut buf = vec![0u8; n];
        check(get_fn(prog, buf.as_mut_ptr().cast()), "read");
        buf
    }
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    let Some(path) = find_nvrtc() else {
        assert!(
            std::env::var_os("CLOISTER_REQUIRE_NVRTC").is_none(),
            "CLOISTER_REQUIRE_NVRTC is set but libnvrtc was not found"
        );
        println!("skipped: libnvrtc not found");
        return;
    };
    // libnvrtc dlopen()s libnvrtc-builtins.so.<ver> by bare name at compile time, which fails
    // unless its directory is on LD_LIBRARY_PATH. Loading it first, from the same directory,
    // makes that dlopen find the already-loaded library by its soname.
    let _builtins = path.parent().and_then(builtins_in).map(|b| {
        // SAFETY: loading runs the library's initialisers; it is a plain NVIDIA shared library.
        unsafe { Library::new(b) }.unwrap()
    });
    // SAFETY: as above.
    let lib = unsafe { Library::new(&path) }.unwrap();
    // SAFETY: documented NVRTC C API signatures (nvrtc.h).
    let (version, create, compile, destroy) = unsafe {
        (
            lib.get::<Version>(b"nvrtcVersion\0").unwrap(),
            lib.get::<CreateProgram>(b"nvrtcCreateProgram\0").unwrap(),
            lib.get::<CompileProgram>(b"nvrtcCompileProgram\0").unwrap(),
            lib.get::<DestroyProgram>(b"nvrtcDestroyProgram\0").unwrap(),
        )
    };
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers.
    check(unsafe { version(&mut major, &mut minor) }, "nvrtcVersion");
    println!("NVRTC {major}.{minor} from {}", path.display());

    let header_src: Vec<CString> = KERNEL_HEADERS
        .iter()
        .map(|h| CString::new(h.source).unwrap())
        .collect();
    let header_names: Vec<CString> = KERNEL_HEADERS
        .iter()
        .map(|h| CString::new(h.name).unwrap())
        .collect();
    let header_src_ptrs: Vec<*const c_char> = header_src.iter().map(|s| s.as_ptr()).collect();
    let header_name_ptrs: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();
    let options: Vec<CString> = NVRTC_OPTIONS
        .iter()
        .map(|o| CString::new(*o).unwrap())
        .collect();
    let option_ptrs: Vec<*const c_char> = options.iter().map(|s| s.as_ptr()).collect();

    // Every .cu in kernels/ must be listed in KERNELS (so it is embedded and compiled at run time).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cu"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = KERNELS.iter().map(|(k, _)| k.name.to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "kernels/*.cu and gpu::KERNELS differ");

    // Each kernel twice: with in-memory headers, and flattened (what the cudarc loader compiles).
    for ((kernel, entries), flat) in KERNELS.iter().flat_map(|k| [(k, false), (k, true)]) {
        let text = if flat {
            cloister::gpu::flattened_source(kernel).unwrap()
        } else {
            kernel.source.to_owned()
        };
        let n_headers = if flat {
            0
        } else {
            header_src_ptrs.len() as c_int
        };
        let src = CString::new(text).unwrap();
        let name = CString::new(kernel.name).unwrap();
        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: all pointers are valid NUL-terminated strings that outlive the program; the
        // header arrays have KERNEL_HEADERS.len() entries each.
        let created = unsafe {
            create(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                n_headers,
                header_src_ptrs.as_ptr(),
                header_name_ptrs.as_ptr(),
            )
        };
        check(created, "nvrtcCreateProgram");
        // SAFETY: `prog` was created above; options are valid C strings.
        let compiled = unsafe { compile(prog, option_ptrs.len() as c_int, option_ptrs.as_ptr()) };
        let log = read(&lib, b"log", prog);
        let log = CStr::from_bytes_until_nul(&log)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert_eq!(compiled, 0, "{} failed to compile:\n{log}", kernel.name);
        assert!(
            log.trim().is_empty(),
            "{} compiled with warnings:\n{log}",
            kernel.name
        );
        let ptx = read(&lib, b"ptx", prog);
        let ptx_text = String::from_utf8_lossy(&ptx);
        for entry in *entries {
            assert!(
                ptx_text.contains(&format!(".entry {entry}(")),
                "{}: no unmangled entry point {entry} in the PTX",
                kernel.name
            );
        }
        let how = if flat { "flattened" } else { "with headers" };
        println!(
            "{} ({how}): PTX {} bytes, entries {entries:?}",
            kernel.name,
            ptx.len()
        );
        // For a GPU machine without NVRTC: keep the PTX to load with the driver directly.
        if let (Some(dir), true) = (std::env::var_os("CLOISTER_WRITE_PTX_DIR"), flat) {
            let ptx_str = CStr::from_bytes_until_nul(&ptx).unwrap().to_bytes();
            std::fs::write(
                Path::new(&dir).join(kernel.name.replace(".cu", ".ptx")),
                ptx_str,
            )
            .unwrap();
        }
        // SAFETY: destroys the program created above, exactly once.
        check(unsafe { destroy(&mut prog) }, "nvrtcDestroyProgram");
    }
}
