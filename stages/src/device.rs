//! Run-time choice of the compute device: `cpu` (flex, always built), `wgpu[:N]` and
//! `cuda[:N]` (only in builds with the `wgpu` / `cuda` features).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use burn::prelude::*;

use crate::error::{MlError, Result};

/// The CPU backend: flex (pure Rust, SIMD + rayon-parallel gemm).
pub type CpuBackend = burn::backend::Flex;
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Wgpu;
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;

/// A device named on the command line or in a pipeline (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// `wgpu` (the default adapter) or `wgpu:N` (the N-th discrete GPU).
    Wgpu(Option<usize>),
    /// `cuda` (= `cuda:0`) or `cuda:N`.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = MlError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |message: &str| MlError::Device {
            spec: s.to_string(),
            message: message.to_string(),
        };
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (
                k,
                Some(
                    i.parse::<usize>()
                        .map_err(|_| bad("the index after ':' must be a number"))?,
                ),
            ),
            None => (s, None),
        };
        match kind {
            "cpu" if index.is_none() => Ok(DeviceSpec::Cpu),
            "cpu" => Err(bad("cpu takes no index")),
            "wgpu" => Ok(DeviceSpec::Wgpu(index)),
            "cuda" => Ok(DeviceSpec::Cuda(index.unwrap_or(0))),
            _ => Err(bad("expected cpu, wgpu, wgpu:N, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Wgpu(None) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// An error when this binary was built without the backend the spec names.
    pub fn check_compiled(&self) -> Result<()> {
        let missing = |feature: &str| MlError::Device {
            spec: self.to_string(),
            message: format!(
                "this build has no {feature} backend; rebuild with `--features {feature}`"
            ),
        };
        match self {
            DeviceSpec::Cpu => Ok(()),
            DeviceSpec::Wgpu(_) if cfg!(feature = "wgpu") => Ok(()),
            DeviceSpec::Wgpu(_) => Err(missing("wgpu")),
            DeviceSpec::Cuda(_) if cfg!(feature = "cuda") => Ok(()),
            DeviceSpec::Cuda(_) => Err(missing("cuda")),
        }
    }

    #[cfg(feature = "wgpu")]
    pub fn wgpu_device(&self) -> burn::backend::wgpu::WgpuDevice {
        use burn::backend::wgpu::WgpuDevice;
        match self {
            DeviceSpec::Wgpu(Some(i)) => WgpuDevice::DiscreteGpu(*i),
            _ => WgpuDevice::DefaultDevice,
        }
    }

    #[cfg(feature = "cuda")]
    pub fn cuda_device(&self) -> burn::backend::cuda::CudaDevice {
        match self {
            DeviceSpec::Cuda(i) => burn::backend::cuda::CudaDevice::new(*i),
            _ => burn::backend::cuda::CudaDevice::new(0),
        }
    }
}

/// Runs a tiny operation on `device` so that a missing GPU or driver becomes a clear error
/// here rather than a panic deep inside the first forward pass. GPU runtimes report a
/// missing device by panicking (often on a thread of their own, which then makes the
/// caller's thread panic with a bare `RecvError`), so while the probe runs the panic hook
/// records messages instead of printing them, and the first one, the cause, is the error.
pub fn probe<B: Backend>(spec: &DeviceSpec, device: &B::Device) -> Result<()> {
    // One probe at a time: each swaps the process-wide panic hook.
    static PROBING: Mutex<()> = Mutex::new(());
    let _probing = PROBING.lock().unwrap_or_else(|e| e.into_inner());
    let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let previous = std::panic::take_hook();
    let sink = Arc::clone(&messages);
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the runtime panicked".into());
        sink.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
    }));
    let device = device.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let t = Tensor::<B, 1>::from_floats([1.0, 2.0], &device);
        t.sum().into_scalar().elem::<f32>()
    }));
    std::panic::set_hook(previous);
    match outcome {
        Ok(v) if (v - 3.0).abs() < 1e-6 => Ok(()),
        Ok(v) => Err(MlError::Device {
            spec: spec.to_string(),
            message: format!("self-test returned {v}, expected 3"),
        }),
        Err(_) => {
            let messages = messages.lock().unwrap_or_else(|e| e.into_inner());
            let cause = messages
                .first()
                .map_or("the runtime panicked", String::as_str);
            Err(MlError::Device {
                spec: spec.to_string(),
                message: format!("no usable device: {}", shorten(cause, 240)),
            })
        }
    }
}

/// `text` cut to at most `max` characters, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!(
            "wgpu".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Wgpu(None)
        );
        assert_eq!(
            "wgpu:2".parse::<DeviceSpec>().unwrap().to_string(),
            "wgpu:2"
        );
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("cpu:0".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn missing_backends_are_named() {
        assert!(DeviceSpec::Cpu.check_compiled().is_ok());
        let err = DeviceSpec::Cuda(0).check_compiled();
        assert_eq!(err.is_ok(), cfg!(feature = "cuda"));
        if let Err(e) = err {
            assert!(e.to_string().contains("--features cuda"), "{e}");
        }
    }
}
