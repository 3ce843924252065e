//! A loaded image classifier: labels, preprocessing and a tract model, and
//! running batches through it.
//!
//! Loading happens once, by one of two readers: [`onnx`] (the ONNX protobuf for facts
//! and metadata, then tract's decluttered typed model with the input fact fixed,
//! batch left symbolic) or [`nnef`] (archives written by `fennec convert`, the only
//! models the `lite` build, without the `onnx` feature, reads). Both take labels and
//! preprocessing in the same order of precedence ([`resolve`]). Optimised runnable
//! plans are made per batch size on first use and cached. Any panic inside tract is
//! caught and turned into an error naming the model file, with nothing else on
//! stderr; in a `panic = "abort"` build, where it cannot be caught, [`panic_guard`]
//! ends the process with the same one-line error and exit code 1.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tract_nnef::prelude::*;
use tract_nnef::tract_core::internal::DimLike;
use tract_nnef::tract_core::ops::Cost;

use crate::error::{Error, Result, chain};
use crate::metadata::ModelMetadata;
use crate::preprocess::{Layout, Preprocess, PreprocessChanges};
use crate::scores::{OutputKind, class_count};

mod nnef;
#[cfg(feature = "onnx")]
mod onnx;
#[cfg(feature = "onnx")]
mod quantized;
mod resolve;

/// Where a piece of model configuration came from, reported by `info` and `predict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The model file's fennec metadata.
    Metadata,
    /// Given by the user (a file or flags).
    User,
    /// Nothing given: derived from the input shape (preprocessing) or class indices (labels).
    Default,
}

/// What the user gives for what the model file does not say (or says wrongly);
/// each wins over the file ([`resolve`] has the order).
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Class names replacing the file's (e.g. from `--labels FILE`).
    pub labels: Option<Vec<String>>,
    /// A whole spec replacing the file's (e.g. from `--preprocess FILE.yaml`).
    pub preprocess: Option<Preprocess>,
    /// Changes to single fields, applied last (e.g. `--size`, `--filter`).
    pub changes: PreprocessChanges,
}

/// Static facts about a loaded model, for `fennec info` and reports.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub file_size: u64,
    /// What the ONNX file declares (kept in NNEF archives made from it).
    #[serde(flatten)]
    pub graph: GraphFacts,
    /// Channels of the input image: 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Fixed batch size of the graph, `None` when dynamic.
    pub fixed_batch: Option<usize>,
    /// Classes scored (2 for a model with one sigmoid output).
    pub num_classes: usize,
    /// What the output's numbers are, so fennec knows how to make probabilities.
    pub output_kind: OutputKind,
    /// Multiply-adds x 2 per image, from tract's cost model.
    pub flops_per_image: Option<u64>,
    pub labels_source: Source,
    pub preprocess_source: Source,
    pub metadata: ModelMetadata,
}

/// The graph as its ONNX file describes it: read by the ONNX loader, stored by
/// `fennec convert` so that an NNEF archive reports the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphFacts {
    pub producer: String,
    pub producer_version: String,
    pub opset: i64,
    pub ir_version: i64,
    pub input_name: String,
    /// ONNX input shape, symbolic dims by name (e.g. `["N", 3, 224, 224]`).
    pub input_shape: Vec<String>,
    pub output_name: String,
    pub output_shape: Vec<String>,
    pub layout: Layout,
    pub parameters: u64,
    /// How the weights are stored and their size (absent from archives written
    /// before fennec recorded it).
    #[serde(default)]
    pub precision: Precision,
}

/// How a model's weights are stored, for `fennec info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precision {
    /// `f32`, `f16`, `int8 (QDQ)`, `int8 (QOperator)`, `int8 (dynamic)`, or
    /// `unknown` (NNEF archives written before fennec recorded it).
    pub kind: String,
    /// Bytes of all initializers (weights, biases, scales, constants).
    pub weight_bytes: u64,
}

impl Default for Precision {
    fn default() -> Self {
        Precision {
            kind: "unknown".into(),
            weight_bytes: 0,
        }
    }
}

/// What a reader (ONNX or NNEF) made of a model file, for [`Classifier::assemble`].
struct Found {
    graph: GraphFacts,
    metadata: ModelMetadata,
    output_kind: OutputKind,
    /// Raw outputs per image: 1 for a sigmoid unit, else one per class.
    raw_classes: usize,
    /// The labels the file itself carries, and where they came from.
    file_labels: Option<(Vec<String>, Source)>,
    preprocess: (Preprocess, Source),
    /// With its input fact set: the batch dimension fixed by the graph, or symbolic.
    typed: TypedModel,
}

type Plan = Arc<TypedRunnableModel>;

/// A loaded classifier: labels, preprocessing and a runnable model.
pub struct Classifier {
    pub info: ModelInfo,
    pub labels: Vec<String>,
    pub preprocess: Preprocess,
    typed: TypedModel,
    batch_symbol: Option<Symbol>,
    /// Raw outputs per image of the graph (1 for sigmoid models, else == labels).
    raw_classes: usize,
    plans: Mutex<HashMap<usize, Plan>>,
}

impl Classifier {
    /// Loads and prepares `path`. Fails with a one-line error naming the file.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Classifier> {
        let bytes = fs_err::read(path)?;
        let load = || {
            if nnef::is_nnef(&bytes) {
                return nnef::load(&bytes, path, options);
            }
            #[cfg(feature = "onnx")]
            return onnx::load(&bytes, path, options);
            #[cfg(not(feature = "onnx"))]
            return Err(nnef::lite_cannot_read_onnx(path));
        };
        let _scope = panic_guard::Scope::enter(path);
        match catch_unwind(AssertUnwindSafe(load)) {
            Ok(r) => r,
            Err(panic) => Err(Error::Tract {
                path: path.into(),
                reason: panic_message(panic),
            }),
        }
    }

    /// The classifier of a model a reader has read: labels settled, facts gathered,
    /// FLOPs counted.
    fn assemble(
        path: &Path,
        file_size: usize,
        options: &LoadOptions,
        found: Found,
    ) -> Result<Classifier> {
        let num_classes = class_count(found.raw_classes);
        let (labels, labels_source) =
            resolve::labels(path, options, found.file_labels, num_classes)?;
        let (preprocess, preprocess_source) = found.preprocess;
        let input = found
            .typed
            .input_fact(0)
            .map_err(|e| Error::tract(path, &e))?;
        let batch = input.shape[0].clone();
        let info = ModelInfo {
            path: path.into(),
            file_size: file_size as u64,
            graph: found.graph,
            channels: preprocess.channels(),
            fixed_batch: batch.to_usize().ok(),
            num_classes,
            output_kind: found.output_kind,
            flops_per_image: None,
            labels_source,
            preprocess_source,
            metadata: found.metadata,
        };
        let mut classifier = Classifier {
            info,
            labels,
            preprocess,
            typed: found.typed,
            batch_symbol: match batch {
                TDim::Sym(s) => Some(s),
                _ => None,
            },
            raw_classes: found.raw_classes,
            plans: Mutex::new(HashMap::new()),
        };
        classifier.info.flops_per_image = classifier.flops_per_image();
        Ok(classifier)
    }

    /// Batch sizes this model accepts: `None` = any.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.info.fixed_batch
    }

    /// The optimised plan for `n` images, made on first use.
    fn plan(&self, n: usize) -> Result<Plan> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = plans.get(&n) {
            return Ok(p.clone());
        }
        let path = &self.info.path;
        let make = || -> TractResult<Plan> {
            let mut model = match &self.batch_symbol {
                Some(s) => {
                    let subs = HashMap::from([(s.clone(), TDim::from(n as i64))]);
                    self.typed.set_symbols(&subs)?
                }
                None => self.typed.clone(),
            };
            // fennec's own kernels for the conv/ReLU/max-pool chains tract is slow at.
            crate::kernels::rewrite(&mut model)?;
            model.into_optimized()?.into_runnable()
        };
        let plan = guard_tract(path, make)?;
        plans.insert(n, plan.clone());
        Ok(plan)
    }

    /// Makes the plan for batch size `n` now, so timing excludes it.
    pub fn prepare(&self, n: usize) -> Result<()> {
        self.plan(self.fixed_batch().unwrap_or(n)).map(|_| ())
    }

    /// Runs `n` preprocessed images (`n * preprocess.tensor_len()` values, in the
    /// spec's layout) and returns one probability row per image. Graphs with a fixed
    /// batch size get the images in slices of that size, the last one zero-padded.
    pub fn classify(&self, input: &[f32], n: usize) -> Result<Vec<Vec<f32>>> {
        let len = self.preprocess.tensor_len();
        assert_eq!(input.len(), n * len, "input length");
        let Some(b) = self.fixed_batch() else {
            return self.run(input, n);
        };
        let mut rows = Vec::with_capacity(n);
        for slice in input.chunks(b * len) {
            let real = slice.len() / len;
            if real == b {
                rows.extend(self.run(slice, b)?);
            } else {
                let mut padded = slice.to_vec();
                padded.resize(b * len, 0.0);
                rows.extend(self.run(&padded, b)?.into_iter().take(real));
            }
        }
        Ok(rows)
    }

    fn run(&self, input: &[f32], n: usize) -> Result<Vec<Vec<f32>>> {
        let path = &self.info.path;
        let plan = self.plan(n)?;
        let run = || -> TractResult<Vec<f32>> {
            let tensor = Tensor::from_shape(&self.preprocess.batch_shape(n), input)?;
            let out = plan.run(tvec!(tensor.into_tvalue()))?;
            let out = out[0].cast_to::<f32>()?;
            Ok(out.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
        };
        let raw = guard_tract(path, run)?;
        Ok(raw
            .chunks_exact(self.raw_classes)
            .map(|row| self.info.output_kind.to_probabilities(row))
            .collect())
    }

    /// 2 x multiply-adds per image from tract's cost model, on a batch-1 copy.
    fn flops_per_image(&self) -> Option<u64> {
        let model = match &self.batch_symbol {
            Some(s) => self
                .typed
                .set_symbols(&HashMap::from([(s.clone(), TDim::from(1))]))
                .ok()?,
            None => self.typed.clone(),
        };
        let mut fma: u64 = 0;
        for node in model.nodes() {
            let inputs = model.node_input_facts(node.id).ok()?;
            for (cost, n) in node.op.cost(&inputs).ok()? {
                if matches!(cost, Cost::FMA(_)) {
                    fma += n.to_i64().ok()?.max(0) as u64;
                }
            }
        }
        let per_image = fma / self.fixed_batch().unwrap_or(1) as u64;
        Some(2 * per_image)
    }

    /// Wall time of each node of the optimised plan for `n` images (a fixed-batch
    /// graph's own batch size), averaged over `runs` inferences of `input` after
    /// one untimed run; slowest first. For `fennec bench --profile`.
    pub fn profile(&self, input: &[f32], n: usize, runs: usize) -> Result<Vec<NodeTime>> {
        let path = &self.info.path;
        let n = self.fixed_batch().unwrap_or(n);
        assert_eq!(
            input.len(),
            n * self.preprocess.tensor_len(),
            "input length"
        );
        let plan = self.plan(n)?;
        let profile = || -> TractResult<Vec<NodeTime>> {
            let tensor = Tensor::from_shape(&self.preprocess.batch_shape(n), input)?;
            let mut state = plan.spawn()?;
            let mut seconds = vec![0.0f64; plan.model().nodes().len()];
            for run in 0..=runs {
                state.run_plan_with_eval(
                    tvec!(tensor.clone().into_tvalue()),
                    |ctx, op_state, node, inputs| {
                        let start = std::time::Instant::now();
                        let out = tract_nnef::tract_core::plan::eval(ctx, op_state, node, inputs);
                        if run > 0 {
                            seconds[node.id] += start.elapsed().as_secs_f64();
                        }
                        out
                    },
                )?;
            }
            let mut nodes: Vec<NodeTime> = plan
                .model()
                .nodes()
                .iter()
                .filter(|node| seconds[node.id] > 0.0)
                .map(|node| {
                    let (flops, param_bytes) = node_cost(plan.model(), node);
                    NodeTime {
                        node: node.name.clone(),
                        op: node.op.name().to_string(),
                        ms: seconds[node.id] * 1000.0 / runs.max(1) as f64,
                        flops,
                        param_bytes,
                    }
                })
                .collect();
            nodes.sort_by(|a, b| b.ms.total_cmp(&a.ms));
            Ok(nodes)
        };
        guard_tract(path, profile)
    }
}

/// FLOPs (2 x multiply-adds) and constant parameter bytes of one run of `node`,
/// from its op's cost model (zeros where the op reports none).
fn node_cost(model: &TypedModel, node: &TypedNode) -> (f64, f64) {
    let (mut flops, mut bytes) = (0.0, 0.0);
    let Ok(inputs) = model.node_input_facts(node.id) else {
        return (flops, bytes);
    };
    for (cost, n) in node.op.cost(&inputs).unwrap_or_default() {
        let Ok(n) = n.to_i64() else { continue };
        match cost {
            Cost::FMA(_) => flops += 2.0 * n as f64,
            Cost::Params(dt) => bytes += (n as usize * dt.size_of()) as f64,
            _ => {}
        }
    }
    (flops, bytes)
}

/// Runs tract work on the model at `path`: its errors and its panics (tract asserts
/// on some malformed graphs) both become one [`Error::Tract`] naming the file.
fn guard_tract<T>(path: &Path, work: impl FnOnce() -> TractResult<T>) -> Result<T> {
    let _scope = panic_guard::Scope::enter(path);
    let reason = match catch_unwind(AssertUnwindSafe(work)) {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(e)) => chain(&e),
        Err(panic) => panic_message(panic),
    };
    Err(Error::Tract {
        path: path.into(),
        reason,
    })
}

/// Time spent in one node of a plan, from [`Classifier::profile`].
#[derive(Debug, Clone, Serialize)]
pub struct NodeTime {
    /// The node's name (from the ONNX graph, with tract's suffixes).
    pub node: String,
    /// The operator that ran it (tract's, or fennec's `FennecConv`).
    pub op: String,
    /// Milliseconds per inference.
    pub ms: f64,
    /// FLOPs per inference (2 x multiply-adds, from the op's cost model; 0 when
    /// it reports none).
    pub flops: f64,
    /// Bytes of constant parameters (weights) the op reads per inference, where
    /// its cost model reports them (fennec's dense op does); 0 otherwise.
    pub param_bytes: f64,
}

/// Sets how many threads tract uses for one inference (matrix products and
/// element-wise ops). 1 = single-threaded, the default. Without the `multithread`
/// feature inference is always single-threaded.
pub fn set_inference_threads(n: usize) {
    use tract_nnef::tract_core::tract_linalg::multithread::{Executor, set_default_executor};
    #[cfg(feature = "multithread")]
    if n > 1 {
        set_default_executor(Executor::multithread(n));
        return;
    }
    let _ = n;
    set_default_executor(Executor::SingleThread);
}

/// How many threads one inference uses now (see [`set_inference_threads`]).
pub fn inference_threads() -> usize {
    #[cfg(feature = "multithread")]
    {
        use tract_nnef::tract_core::tract_linalg::multithread::{Executor, current_tract_executor};
        if let Executor::MultiThread(pool) = current_tract_executor() {
            return pool.current_num_threads();
        }
    }
    1
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    panic_text(
        p.downcast_ref::<&str>().copied(),
        p.downcast_ref::<String>(),
    )
}

fn panic_text(s: Option<&str>, string: Option<&String>) -> String {
    let msg = s.or(string.map(String::as_str)).unwrap_or("unknown panic");
    format!("tract hit an internal error: {}", msg.replace('\n', " "))
}

/// What a panic inside tract prints. In the normal (unwinding) builds `catch_unwind`
/// turns it into [`Error::Tract`], and the panic hook stays silent on the thread that
/// is inside a [`Scope`], so stderr holds only that one error line (a panic on
/// another thread, e.g. one of tract's workers, is printed as usual). In builds with
/// `panic = "abort"` (the smallest Pi build, see docs/deploy-pi.md) nothing can be
/// caught: while tract works on a model, the hook prints the error [`Error::Tract`]
/// would have printed (`error: MODEL: tract cannot run this model: tract hit an
/// internal error: ...`) and exits with code 1 instead of aborting. The process then
/// still ends: a folder run stops at the first such panic rather than skipping the
/// image.
mod panic_guard {
    use std::cell::Cell;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, Once};

    /// The model tract is working on, and how many scopes (threads) are in it: kept
    /// only by the abort builds, whose hook prints it (an unwinding build's error
    /// names the file itself), so a batch in the normal builds takes no lock.
    static MODEL: Mutex<Option<(PathBuf, usize)>> = Mutex::new(None);

    thread_local! {
        /// How many scopes this thread is inside.
        static DEPTH: Cell<usize> = const { Cell::new(0) };
    }

    /// Marks the model tract is working on, on this thread, until dropped.
    pub(super) struct Scope(());

    impl Scope {
        pub(super) fn enter(path: &Path) -> Scope {
            static HOOK: Once = Once::new();
            HOOK.call_once(install_hook);
            if cfg!(panic = "abort")
                && let Ok(mut m) = MODEL.lock()
            {
                let depth = m.as_ref().map_or(0, |(_, d)| *d);
                *m = Some((path.to_path_buf(), depth + 1));
            }
            DEPTH.with(|d| d.set(d.get() + 1));
            Scope(())
        }
    }

    impl Drop for Scope {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
            if cfg!(panic = "abort")
                && let Ok(mut m) = MODEL.lock()
            {
                *m = match m.take() {
                    Some((path, depth)) if depth > 1 => Some((path, depth - 1)),
                    _ => None,
                };
            }
        }
    }

    fn install_hook() {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if cfg!(panic = "abort") {
                let model = MODEL
                    .lock()
                    .ok()
                    .and_then(|m| m.as_ref().map(|(p, _)| p.clone()));
                if let Some(path) = model {
                    let p = info.payload();
                    let reason =
                        super::panic_text(p.downcast_ref::<&str>().copied(), p.downcast_ref());
                    eprintln!("error: {}", crate::Error::Tract { path, reason });
                    std::process::exit(1);
                }
            } else if DEPTH.with(Cell::get) > 0 {
                return; // caught by the scope's catch_unwind, reported as Error::Tract
            }
            previous(info)
        }));
    }
}
