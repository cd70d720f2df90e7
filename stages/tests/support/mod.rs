//! Shared by the stage tests (`mod support;`): run a built-in kind as the engine does, and
//! run one test body on every backend of the build ([`on_backends!`]).
#![allow(dead_code, unused_macros)]

#[cfg(feature = "ml")]
pub mod training;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use serde_json::Value;
use tsumugi_stages::contract::{Reporter, StageInput};
use tsumugi_stages::kinds;

/// Runs kind `kind` as stage `name` of a project at `root`, on the CPU, with its declared
/// outputs under `root/out/<name>/`; returns output key → path.
pub fn run_kind(
    kind: &str,
    root: &Path,
    name: &str,
    with: &Value,
    rep: &dyn Reporter,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let info = kinds::kind(kind).ok_or_else(|| anyhow!("no kind {kind}"))?;
    let dir = root.join("out").join(name);
    let outs: BTreeMap<String, PathBuf> = info
        .outputs
        .iter()
        .map(|(k, f)| (k.to_string(), dir.join(f)))
        .collect();
    std::fs::create_dir_all(&dir)?;
    let env = BTreeMap::new();
    let input = StageInput {
        name,
        project_root: root,
        with,
        outs: &outs,
        env: &env,
        device: "cpu",
    };
    kinds::implementation(kind)
        .ok_or_else(|| anyhow!("kind {kind} is not implemented in this build"))?
        .run(&input, rep)?;
    Ok(outs)
}

/// Each output's text (for kinds whose outputs are files).
pub fn read_outputs(outs: &BTreeMap<String, PathBuf>) -> BTreeMap<String, String> {
    outs.iter()
        .map(|(k, p)| (k.clone(), std::fs::read_to_string(p).unwrap()))
        .collect()
}

/// A reporter that drops everything and never cancels.
pub struct Quiet;

impl Reporter for Quiet {
    fn progress(&self, _: u64, _: Option<u64>, _: &str) {}
    fn metric(&self, _: &str, _: Option<u64>, _: f64) {}
    fn log(&self, _: &str) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// Instantiates test bodies generic over the backend once per backend of the build:
/// `name` on flex (always), and `wgpu::name` on wgpu in builds with `--features wgpu`
/// (`cargo test -p tsumugi-stages --features wgpu --test T -- wgpu::` runs only those).
/// Each entry `name: body(args…);` calls `body::<B>(&device, args…)`.
///
/// A wgpu test without a usable adapter prints why and passes, unless
/// `TSUMUGI_REQUIRE_WGPU=1` (CI, on lavapipe), where it fails: see [`wgpu_device`].
macro_rules! on_backends {
    ($( $(#[$meta:meta])* $name:ident : $body:ident ( $($arg:expr),* $(,)? ); )+) => {
        $(
            $(#[$meta])*
            #[test]
            fn $name() {
                $body::<burn::backend::Flex>(&Default::default() $(, $arg)*)
            }
        )+
        #[cfg(feature = "wgpu")]
        mod wgpu {
            use super::*;
            $(
                $(#[$meta])*
                #[test]
                fn $name() {
                    if let Some(device) = crate::support::wgpu_device() {
                        $body::<burn::backend::Wgpu>(&device $(, $arg)*)
                    }
                }
            )+
        }
        #[cfg(feature = "cuda")]
        mod cuda {
            use super::*;
            $(
                $(#[$meta])*
                #[test]
                fn $name() {
                    if let Some(device) = crate::support::cuda_device() {
                        $body::<burn::backend::Cuda>(&device $(, $arg)*)
                    }
                }
            )+
        }
    };
}
// Unused in the test binaries that have no generic bodies.
#[allow(unused_imports)]
pub(crate) use on_backends;

/// The wgpu device the `wgpu::` tests run on (`--device wgpu`: wgpu's default adapter,
/// lavapipe on a machine without a GPU), after [`device::probe`] ran a kernel on it.
/// `None`, with the reason on stderr, when no adapter works; with `TSUMUGI_REQUIRE_WGPU=1`
/// that is a failure instead, so that CI cannot pass by skipping.
///
/// [`device::probe`]: tsumugi_stages::device::probe
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> Option<burn::backend::wgpu::WgpuDevice> {
    use std::sync::OnceLock;
    use tsumugi_stages::device::{self, DeviceSpec, WgpuBackend};
    // One probe per test binary: the adapter does not come and go between tests.
    static PROBED: OnceLock<Result<(), String>> = OnceLock::new();
    let spec = DeviceSpec::Wgpu(None);
    let device = spec.wgpu_device();
    let probed = PROBED
        .get_or_init(|| device::probe::<WgpuBackend>(&spec, &device).map_err(|e| e.to_string()));
    match probed {
        Ok(()) => Some(device),
        Err(e) => {
            let hint = "install a Vulkan driver (Debian: apt-get install mesa-vulkan-drivers, lavapipe runs on the CPU)";
            if std::env::var("TSUMUGI_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
                panic!("TSUMUGI_REQUIRE_WGPU=1 but {e}; {hint}");
            }
            eprintln!("skipped (no wgpu adapter): {e}; {hint}");
            None
        }
    }
}

/// The CUDA device the `cuda::` tests run on (`--device cuda`, GPU 0), after
/// [`device::probe`] ran a kernel on it; `None` with the reason on stderr when there is no
/// usable GPU, a failure instead with `TSUMUGI_REQUIRE_CUDA=1` (benches/gpu/run.sh).
///
/// [`device::probe`]: tsumugi_stages::device::probe
#[cfg(feature = "cuda")]
pub fn cuda_device() -> Option<burn::backend::cuda::CudaDevice> {
    use std::sync::OnceLock;
    use tsumugi_stages::device::{self, CudaBackend, DeviceSpec};
    static PROBED: OnceLock<Result<(), String>> = OnceLock::new();
    let spec = DeviceSpec::Cuda(0);
    let device = spec.cuda_device();
    let probed = PROBED
        .get_or_init(|| device::probe::<CudaBackend>(&spec, &device).map_err(|e| e.to_string()));
    match probed {
        Ok(()) => Some(device),
        Err(e) => {
            if std::env::var("TSUMUGI_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("TSUMUGI_REQUIRE_CUDA=1 but {e}");
            }
            eprintln!("skipped (no CUDA device): {e}");
            None
        }
    }
}

/// `flex`, `wgpu`, `cuda` (with `autodiff ` before it under autodiff), for the tests' output.
pub fn backend_name<B>() -> String {
    let t = std::any::type_name::<B>();
    let base = ["Wgpu", "Cuda", "Flex"]
        .into_iter()
        .find(|b| t.contains(b))
        .map_or(t.to_string(), str::to_lowercase);
    if t.contains("Autodiff") {
        format!("autodiff {base}")
    } else {
        base
    }
}
