//! Choosing the compute device: burn's pure-Rust `flex` CPU backend in every build,
//! CUDA and wgpu only in builds with the `cuda` / `wgpu` cargo features, so the
//! default build links no GPU library.

use burn::tensor::Device;

/// The devices `--device` accepts, spelled `cpu`, `cuda`, `wgpu` there, in JSON and
/// in summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[derive(strum::Display, strum::EnumString, strum::IntoStaticStr, strum::VariantNames)]
#[strum(serialize_all = "lowercase")]
pub enum Kind {
    /// burn's flex backend on the CPU (multi-threaded, see `--threads`).
    #[default]
    Cpu,
    /// The first NVIDIA GPU (build with `--features cuda`).
    Cuda,
    /// The default GPU through wgpu: Vulkan, Metal or DX12 (build with `--features wgpu`).
    Wgpu,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "--device {name}: this fennec-train was built without GPU support for it; rebuild with \
         `cargo build --release -p fennec-train --features {name}`"
    )]
    NotBuilt { name: &'static str },
    #[error("cannot start {threads} compute threads: {reason}")]
    Threads { threads: usize, reason: String },
}

/// Sizes rayon's global pool, which burn's flex backend computes on and the data
/// loader decodes on: `threads`, or all cores. Call once, before any other work.
/// Returns the number of threads.
pub fn init_threads(threads: Option<usize>) -> Result<usize, DeviceError> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("fennec-compute-{i}"))
        .build_global()
        .map_err(|e| DeviceError::Threads {
            threads: n,
            reason: e.to_string(),
        })?;
    Ok(n)
}

impl Kind {
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// The value of `BURN_DEVICE` that makes burn's own default device this one.
    /// burn falls back to `Device::default()` in a few places (optimizer state
    /// loading, among others), which in a GPU-enabled build would be the GPU even
    /// for `--device cpu`.
    pub fn burn_env(self) -> &'static str {
        match self {
            Kind::Cpu => "flex",
            Kind::Cuda => "cuda",
            Kind::Wgpu => "wgpu",
        }
    }

    /// Whether this build can use the device kind.
    pub fn is_built(self) -> bool {
        match self {
            Kind::Cpu => true,
            Kind::Cuda => cfg!(feature = "cuda"),
            Kind::Wgpu => cfg!(feature = "wgpu"),
        }
    }

    /// The (non-autodiff) device; errors when the build lacks the feature.
    pub fn device(self) -> Result<Device, DeviceError> {
        match self {
            Kind::Cpu => Ok(Device::flex()),
            #[cfg(feature = "cuda")]
            Kind::Cuda => Ok(Device::cuda(0)),
            #[cfg(feature = "wgpu")]
            Kind::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[allow(unreachable_patterns)]
            other => Err(DeviceError::NotBuilt { name: other.name() }),
        }
    }
}

/// One line from a backend's execution error, which burn prints over many lines
/// ("An error happened during execution / Caused by: ... / can't allocate buffer of
/// size: N"): the first line and the innermost cause.
pub fn failure_line(error: &dyn std::fmt::Debug) -> String {
    let text = format!("{error:?}");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Caused by") && !l.contains("backtrace"))
        .filter(|l| *l != "Asked at:")
        .collect();
    match (lines.first(), lines.last()) {
        (Some(first), Some(last)) if first != last => format!("{first}: {last}"),
        (Some(first), _) => first.to_string(),
        _ => "unknown failure".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_line_keeps_the_first_line_and_the_innermost_cause() {
        struct Multi;
        impl std::fmt::Debug for Multi {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    f,
                    "Execution(An error happened during execution\nCaused by:\n  Several \
                     failures at once\nCaused by:\n  can't allocate buffer of size: 42\nNo \
                     backtrace available)"
                )
            }
        }
        assert_eq!(
            failure_line(&Multi),
            "Execution(An error happened during execution: can't allocate buffer of size: 42"
        );
    }

    #[test]
    fn names_are_the_cli_spelling() {
        use strum::VariantNames;
        assert_eq!(Kind::VARIANTS, ["cpu", "cuda", "wgpu"]);
        assert_eq!("wgpu".parse::<Kind>(), Ok(Kind::Wgpu));
        assert_eq!(Kind::Cuda.name(), "cuda");
    }

    #[test]
    fn cpu_always_and_gpu_only_with_its_feature() {
        assert!(Kind::Cpu.device().is_ok());
        for k in [Kind::Cuda, Kind::Wgpu] {
            if !k.is_built() {
                let e = k.device().unwrap_err().to_string();
                assert!(e.contains(&format!("--features {}", k.name())), "{e}");
            }
        }
    }
}
