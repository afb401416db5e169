//! A BERT encoder for sentence embeddings, written for this workload: a few short texts per pass
//! on one core.
//!
//! A general tensor library (candle, which this replaced) multiplies a handful of token rows by
//! each weight matrix through a general GEMM that re-packs the weight matrix on every call. For
//! one short query that packing, not the arithmetic, was most of the pass. Here every weight
//! matrix is packed once, at load, into panels of [`PANEL`] output features, and one kernel
//! streams each panel once per block of [`ROW_BLOCK`] token rows.
//!
//! The texts of a pass are not padded to a common length: their tokens are stacked into one
//! matrix for the dense layers, and attention runs over each text's own tokens. Padding to the
//! longest text of a batch wasted work, and needed a mask that changed nothing in the result.
//!
//! The dense layers' weights are kept in 16 bits and every sum in f32. On x86-64 with AVX-512
//! BF16 (detected at run time) weights and activations are bfloat16 and one instruction adds two
//! products to each of 16 sums; otherwise the weights are half precision and the activations
//! f32, widened and multiplied 16 outputs an instruction with AVX-512F, 8 with AVX2, FMA and
//! F16C (the same FMAs in the same order: the same bits); elsewhere a portable kernel does the
//! arithmetic of either packing. The vectors stay within cosine 0.9999 of
//! sentence-transformers' with both (the reference-vector test).

use std::collections::HashMap;

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

/// Output features per packed weight panel: two 8-lane registers.
const PANEL: usize = 16;
/// Token rows per block: a block's activations (up to 1536 floats a row) stay in L2 while every
/// panel of a weight matrix streams past them.
const ROW_BLOCK: usize = 48;
/// Token rows one kernel call keeps in registers. AVX2: 6 rows × 2 registers, 2 weight registers
/// and 1 broadcast, of the 16 ymm registers. The AVX-512 kernels use their 32 registers for 6
/// rows × 4 panels instead (12 rows of one panel measured no faster; 4 panels, 25% faster for a
/// query).
const TILE_ROWS: usize = 6;

/// The fields of a Hugging Face `config.json` the encoder reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}

fn default_eps() -> f64 {
    1e-12
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    /// `gelu` in transformers: the exact one, with erf.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
}

/// A weight matrix `[out, in]` packed for [`matmul`], with its bias.
struct Linear {
    weights: Packed,
    /// `panels × PANEL`, zero-padded like the weights.
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

/// A weight matrix in the layout and precision of the kernel that multiplies by it. Both halve
/// the bytes a pass streams (the f32 weights of all-MiniLM-L6-v2's layers, 42 MB, do not fit in
/// this machine's 32 MB L3; a one-query pass was bound by reading them); every sum is f32.
enum Packed {
    /// `panels × inputs × PANEL` half floats: panel `p`, input `k`, lane `j` is weight
    /// `[p·PANEL + j, k]`; lanes past `outputs` are zero. For the AVX-512F and AVX2/F16C
    /// kernels, which multiply them with f32 activations, and the portable one.
    Half(Vec<half::f16>),
    /// `panels × ⌈inputs / 2⌉ × PANEL × 2` bfloat16s: panel `p`, input pair `q`, lane `j` holds
    /// weights `[p·PANEL + j, 2q]` and `[p·PANEL + j, 2q + 1]` side by side (zero past the
    /// matrix). For AVX-512 BF16, whose `vdpbf16ps` multiplies such pairs by a pair of
    /// activations rounded to bfloat16 and adds both products to an f32 sum: twice the products
    /// per instruction of an f32 FMA, and no conversion of the weights.
    BfloatPairs(Vec<half::bf16>),
}

/// Whether this CPU multiplies bfloat16 pairs (AVX-512 BF16): the weights are then packed as
/// [`Packed::BfloatPairs`], once, at load.
pub(crate) fn has_bfloat_pairs() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The instruction sets the encoder's element-wise steps are compiled for ([`Bert::encode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Baseline,
}

impl Isa {
    /// The widest this CPU has.
    fn best() -> Isa {
        Isa::available()[0]
    }

    /// Those this CPU has, widest first.
    pub(crate) fn available() -> Vec<Isa> {
        let mut found = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                found.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                found.push(Isa::Avx2);
            }
        }
        found.push(Isa::Baseline);
        found
    }
}

/// `v` as the kernels that pair bfloat16s see it: rounded to the nearest bfloat16, ties to even.
fn bfloat(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

struct Layer {
    /// Query, key and value in one matrix: `[3·hidden, hidden]`.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    up: Linear,
    down: Linear,
    output_norm: LayerNorm,
}

/// The loaded encoder. Immutable, so one instance serves every thread.
pub struct Bert {
    hidden: usize,
    heads: usize,
    max_positions: usize,
    activation: Activation,
    word: Vec<f32>,
    /// Position embeddings with the token-type-0 embedding already added (every text is one
    /// segment).
    position: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    /// What the element-wise steps run as: the widest this CPU has, found once at load.
    isa: Isa,
}

/// Why a model directory could not be loaded.
pub type LoadError = String;

struct Weights<'a> {
    tensors: SafeTensors<'a>,
    /// Pack the dense layers as bfloat16 pairs ([`Packed::BfloatPairs`]) rather than halves.
    pairs: bool,
    /// Tensor names without a leading `bert.` (checkpoints saved from `BertForX` carry it).
    names: HashMap<String, String>,
}

impl Weights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        let (values, found) = self.any(name)?;
        if found != shape {
            return Err(format!(
                "{name} has shape {found:?}, the config implies {shape:?}"
            ));
        }
        Ok(values)
    }

    /// A tensor of whatever shape it has, as f32.
    fn any(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        let full = self
            .names
            .get(name)
            .ok_or_else(|| format!("model.safetensors has no tensor {name}"))?;
        let view = self
            .tensors
            .tensor(full)
            .map_err(|e| format!("{name}: {e}"))?;
        let bytes = view.data();
        let values = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => return Err(format!("{name} is {other:?}; f32, f16 or bf16 expected")),
        };
        Ok((values, view.shape().to_vec()))
    }

    fn linear(&self, prefix: &str, inputs: usize, outputs: usize) -> Result<Linear, LoadError> {
        let weight = self.get(&format!("{prefix}.weight"), &[outputs, inputs])?;
        let bias = self.get(&format!("{prefix}.bias"), &[outputs])?;
        Ok(Linear::packed(&weight, &bias, inputs, outputs, self.pairs))
    }

    fn norm(&self, prefix: &str, size: usize, eps: f32) -> Result<LayerNorm, LoadError> {
        // Old TF-converted checkpoints name them gamma/beta.
        let pick = |a: &str, b: &str| {
            let first = format!("{prefix}.{a}");
            if self.names.contains_key(&first) {
                self.get(&first, &[size])
            } else {
                self.get(&format!("{prefix}.{b}"), &[size])
            }
        };
        Ok(LayerNorm {
            weight: pick("weight", "gamma")?,
            bias: pick("bias", "beta")?,
            eps,
        })
    }
}

impl Bert {
    /// Builds the encoder from a `config.json` and the bytes of a `model.safetensors`, its dense
    /// layers packed as bfloat16 pairs or as halves ([`has_bfloat_pairs`] says which this CPU
    /// runs fastest; either works on any CPU, and the tests check both).
    pub fn load(config: &Config, safetensors: &[u8], pairs: bool) -> Result<Bert, LoadError> {
        let activation = match config.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => return Err(format!("hidden_act {other:?} is not supported")),
        };
        if let Some(kind) = &config.position_embedding_type
            && kind != "absolute"
        {
            return Err(format!("position_embedding_type {kind:?} is not supported"));
        }
        let (h, heads) = (config.hidden_size, config.num_attention_heads);
        if heads == 0 || h % heads != 0 {
            return Err(format!(
                "hidden_size {h} is not a multiple of num_attention_heads {heads}"
            ));
        }
        let tensors = SafeTensors::deserialize(safetensors).map_err(|e| e.to_string())?;
        let names = tensors
            .names()
            .into_iter()
            .map(|n| {
                (
                    n.strip_prefix("bert.").unwrap_or(n).to_owned(),
                    n.to_owned(),
                )
            })
            .collect();
        let w = Weights {
            tensors,
            pairs,
            names,
        };
        let eps = config.layer_norm_eps as f32;
        let word = w.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let mut position = w.get(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let (types, shape) = w.any("embeddings.token_type_embeddings.weight")?;
        if shape.len() != 2 || shape[0] == 0 || shape[1] != h {
            return Err(format!(
                "embeddings.token_type_embeddings.weight has shape {shape:?}, [types, {h}] expected"
            ));
        }
        for row in position.chunks_exact_mut(h) {
            for (p, t) in row.iter_mut().zip(&types[..h]) {
                *p += t;
            }
        }
        let embedding_norm = w.norm("embeddings.LayerNorm", h, eps)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                let (mut qkv_w, mut qkv_b) = (Vec::with_capacity(3 * h * h), Vec::new());
                for part in ["query", "key", "value"] {
                    qkv_w.extend(w.get(&format!("{p}.attention.self.{part}.weight"), &[h, h])?);
                    qkv_b.extend(w.get(&format!("{p}.attention.self.{part}.bias"), &[h])?);
                }
                Ok(Layer {
                    qkv: Linear::packed(&qkv_w, &qkv_b, h, 3 * h, w.pairs),
                    attention_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                    attention_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                    up: w.linear(
                        &format!("{p}.intermediate.dense"),
                        h,
                        config.intermediate_size,
                    )?,
                    down: w.linear(&format!("{p}.output.dense"), config.intermediate_size, h)?,
                    output_norm: w.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
                })
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        Ok(Bert {
            hidden: h,
            heads,
            max_positions: config.max_position_embeddings,
            activation,
            word,
            position,
            embedding_norm,
            layers,
            isa: Isa::best(),
        })
    }

    /// The length of the vectors [`Bert::embed`] returns.
    pub fn dims(&self) -> usize {
        self.hidden
    }

    /// Mean-pooled, unit-length embeddings of tokenized texts (special tokens included): what
    /// sentence-transformers computes for a BERT model with mean pooling and normalization.
    pub fn embed(&self, texts: &[&[u32]]) -> Result<Vec<Vec<f32>>, LoadError> {
        let h = self.hidden;
        let vocab = self.word.len() / h;
        for ids in texts {
            if ids.len() > self.max_positions {
                return Err(format!(
                    "{} tokens, the model takes at most {}",
                    ids.len(),
                    self.max_positions
                ));
            }
            if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(format!("token id {id} is outside the vocabulary ({vocab})"));
            }
        }
        Ok(self.encode_on(self.isa, texts))
    }

    /// [`Bert::embed`]'s arithmetic, compiled for `isa` (the caller checked that the CPU has it).
    #[allow(unsafe_code)]
    pub(crate) fn encode_on(&self, isa: Isa, texts: &[&[u32]]) -> Vec<Vec<f32>> {
        match isa {
            // SAFETY: `Isa::available` found it on this CPU (`Bert::load`'s, or the caller's).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.encode_avx512(texts) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.encode_avx2(texts) },
            Isa::Baseline => self.encode(texts),
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(unsafe_code)]
    unsafe fn encode_avx512(&self, texts: &[&[u32]]) -> Vec<Vec<f32>> {
        self.encode(texts)
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(unsafe_code)]
    unsafe fn encode_avx2(&self, texts: &[&[u32]]) -> Vec<Vec<f32>> {
        self.encode(texts)
    }

    /// The forward pass of valid `texts` — everything but the dense layers' products, which
    /// have kernels of their own. Always inlined, with the element-wise steps it calls, into the
    /// copies above: the compiler then vectorizes them for that instruction set. Every sum is
    /// written in a fixed order (lanes or one by one) and nothing is fused, so every copy
    /// computes the same bits.
    #[inline(always)]
    fn encode(&self, texts: &[&[u32]]) -> Vec<Vec<f32>> {
        let h = self.hidden;
        // Where each text's tokens sit in the stacked rows.
        let spans: Vec<(usize, usize)> = texts
            .iter()
            .scan(0, |start, ids| {
                let span = (*start, ids.len());
                *start += ids.len();
                Some(span)
            })
            .collect();
        let rows: usize = texts.iter().map(|t| t.len()).sum();
        let mut x = vec![0f32; rows * h];
        for (ids, &(start, _)) in texts.iter().zip(&spans) {
            for (pos, &id) in ids.iter().enumerate() {
                let out = &mut x[(start + pos) * h..][..h];
                let word = &self.word[id as usize * h..][..h];
                let position = &self.position[pos * h..][..h];
                for ((o, w), p) in out.iter_mut().zip(word).zip(position) {
                    *o = w + p;
                }
            }
        }
        self.embedding_norm.apply(&mut x, h);
        let inter = self.layers.first().map_or(0, |l| l.up.outputs);
        let mut qkv = vec![0f32; rows * 3 * h];
        let mut context = vec![0f32; rows * h];
        let mut projected = vec![0f32; rows * h];
        let mut up = vec![0f32; rows * inter];
        for layer in &self.layers {
            layer.qkv.forward(&x, rows, &mut qkv);
            for &(start, len) in &spans {
                attention(
                    &qkv[start * 3 * h..][..len * 3 * h],
                    len,
                    h,
                    self.heads,
                    &mut context[start * h..][..len * h],
                );
            }
            layer.attention_out.forward(&context, rows, &mut projected);
            add(&mut x, &projected);
            layer.attention_norm.apply(&mut x, h);
            layer.up.forward(&x, rows, &mut up);
            self.activate(&mut up);
            layer.down.forward(&up, rows, &mut projected);
            add(&mut x, &projected);
            layer.output_norm.apply(&mut x, h);
        }
        spans
            .iter()
            .map(|&(start, len)| {
                let mut pooled = vec![0f32; h];
                for row in x[start * h..][..len * h].chunks_exact(h) {
                    add(&mut pooled, row);
                }
                let scale = 1.0 / len.max(1) as f32;
                let norm = pooled
                    .iter()
                    .map(|v| v * v * scale * scale)
                    .sum::<f32>()
                    .sqrt();
                let scale = scale / norm.max(1e-12);
                pooled.iter_mut().for_each(|v| *v *= scale);
                pooled
            })
            .collect()
    }

    #[inline(always)]
    fn activate(&self, x: &mut [f32]) {
        match self.activation {
            Activation::Gelu => x
                .iter_mut()
                .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2))),
            Activation::GeluTanh => {
                let c = (2.0 / std::f32::consts::PI).sqrt();
                x.iter_mut().for_each(|v| {
                    *v = 0.5 * *v * (1.0 + (c * (*v + 0.044715 * *v * *v * *v)).tanh())
                })
            }
            Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        }
    }
}

/// Self-attention over one text's `len` tokens of width `h` in `heads` heads; `qkv` holds each
/// token's query, key and value side by side.
#[inline(always)]
fn attention(qkv: &[f32], len: usize, h: usize, heads: usize, out: &mut [f32]) {
    let d = h / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores = vec![0f32; len];
    let rows = || qkv[..len * 3 * h].chunks_exact(3 * h);
    for head in 0..heads {
        let keys = || rows().map(|row| &row[h + head * d..][..d]);
        let values = || rows().map(|row| &row[2 * h + head * d..][..d]);
        for (t, row) in rows().enumerate() {
            let query = &row[head * d..][..d];
            let mut max = f32::NEG_INFINITY;
            for (s, key) in scores.iter_mut().zip(keys()) {
                *s = dot(query, key) * scale;
                max = max.max(*s);
            }
            // Exponentials first, then their sum in order: the first loop vectorizes.
            scores.iter_mut().for_each(|s| *s = exp(*s - max));
            let sum: f32 = scores.iter().fold(0.0, |sum, s| sum + s);
            scores.iter_mut().for_each(|s| *s /= sum);
            // The probability-weighted values, 16 outputs at a time summed in registers
            // (through memory, each sum waited on the store of the one before).
            let o = &mut out[t * h + head * d..][..d];
            let mut chunks = o.chunks_exact_mut(16);
            for (c, o) in (&mut chunks).enumerate() {
                o.copy_from_slice(&weighted::<16>(&scores, values(), c * 16));
            }
            let tail = chunks.into_remainder();
            let start = d - tail.len();
            for (i, o) in tail.iter_mut().enumerate() {
                *o = weighted::<1>(&scores, values(), start + i)[0];
            }
        }
    }
}

/// Outputs `at..at + N` of one token's attention: the values (one slice per token) weighted by
/// the probabilities `p`, summed in order. `N` fixed, the sums stay in registers.
#[inline(always)]
fn weighted<'a, const N: usize>(
    p: &[f32],
    values: impl Iterator<Item = &'a [f32]>,
    at: usize,
) -> [f32; N] {
    let mut acc = [0f32; N];
    for (p, value) in p.iter().zip(values) {
        for (a, v) in acc.iter_mut().zip(&value[at..][..N]) {
            *a += p * v;
        }
    }
    acc
}

/// `e^x` without branches, so that loops over it vectorize (the C library's `expf` does not):
/// Cephes' range reduction and polynomial, within 2 ulp for the inputs the encoder has.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 × 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    // `x · log2 e` rounded to an integer n: `ROUND + n` is exact, and n (−126..=127) is in its
    // low bits — read from there, not by a conversion, which would not vectorize.
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = p * r + c;
    }
    let y = p * r * r + r + 1.0;
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    y * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// The error function, branch-free: Abramowitz & Stegun 7.1.26 (within 1.5e-7), in f32
/// arithmetic within 5e-7.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let mut p = 1.061_405_4;
    for c in [-1.453_152_1, 1.421_413_8, -0.284_496_72, 0.254_829_6] {
        p = p * t + c;
    }
    (1.0 - p * t * exp(-a * a)).copysign(x)
}

/// Rows a layer norm sums at once.
const NORM_ROWS: usize = 8;

impl LayerNorm {
    #[inline(always)]
    fn apply(&self, x: &mut [f32], width: usize) {
        // Each row's sums are added in order, one element after the other; eight rows at a time
        // so that eight sums progress at once (one row's waited on each addition's latency).
        let mut blocks = x.chunks_exact_mut(width * NORM_ROWS);
        for block in &mut blocks {
            let rows: [&[f32]; NORM_ROWS] = std::array::from_fn(|r| &block[r * width..][..width]);
            // `Sum` for f32 starts from -0.0, which adds nothing: so do these.
            let mut mean = [-0.0f32; NORM_ROWS];
            for i in 0..width {
                for (m, row) in mean.iter_mut().zip(&rows) {
                    *m += row[i];
                }
            }
            let mean = mean.map(|m| m / width as f32);
            let mut var = [-0.0f32; NORM_ROWS];
            for i in 0..width {
                for ((v, row), m) in var.iter_mut().zip(&rows).zip(&mean) {
                    *v += (row[i] - m) * (row[i] - m);
                }
            }
            for (r, row) in block.chunks_exact_mut(width).enumerate() {
                self.finish(row, mean[r], var[r] / width as f32);
            }
        }
        for row in blocks.into_remainder().chunks_exact_mut(width) {
            let mean = row.iter().sum::<f32>() / width as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
            self.finish(row, mean, var);
        }
    }

    /// Normalizes `row` given its mean and variance.
    #[inline(always)]
    fn finish(&self, row: &mut [f32], mean: f32, var: f32) {
        let inv = 1.0 / (var + self.eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

#[inline(always)]
fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// The independent partial sums of [`dot`].
const LANES: usize = 8;

/// A dot product in [`LANES`] independent lanes, which the compiler vectorizes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

impl Linear {
    fn packed(weight: &[f32], bias: &[f32], inputs: usize, outputs: usize, pairs: bool) -> Linear {
        let panels = outputs.div_ceil(PANEL);
        let weights = if pairs {
            let pairs = inputs.div_ceil(2);
            let mut packed = vec![half::bf16::ZERO; panels * pairs * PANEL * 2];
            for o in 0..outputs {
                let (p, j) = (o / PANEL, o % PANEL);
                for k in 0..inputs {
                    packed[((p * pairs + k / 2) * PANEL + j) * 2 + k % 2] =
                        half::bf16::from_f32(weight[o * inputs + k]);
                }
            }
            Packed::BfloatPairs(packed)
        } else {
            let mut packed = vec![half::f16::ZERO; panels * inputs * PANEL];
            for o in 0..outputs {
                let (p, j) = (o / PANEL, o % PANEL);
                for k in 0..inputs {
                    packed[(p * inputs + k) * PANEL + j] =
                        half::f16::from_f32(weight[o * inputs + k]);
                }
            }
            Packed::Half(packed)
        };
        let mut padded = vec![0f32; panels * PANEL];
        padded[..outputs].copy_from_slice(bias);
        Linear {
            weights,
            bias: padded,
            inputs,
            outputs,
        }
    }

    /// `y[rows × outputs] = x[rows × inputs] · weightᵀ + bias`.
    fn forward(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        matmul(
            self,
            &x[..rows * self.inputs],
            rows,
            &mut y[..rows * self.outputs],
        );
    }
}

#[allow(unsafe_code)]
fn matmul(w: &Linear, x: &[f32], rows: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match &w.weights {
        Packed::BfloatPairs(packed) if has_bfloat_pairs() => {
            // SAFETY: the CPU has AVX-512F and BF16 (checked); the kernel indexes within the
            // slices' lengths, which `Linear::forward` and `Linear::packed` sized.
            unsafe { avx512::matmul(w, packed, x, rows, y) };
            return;
        }
        Packed::Half(packed) if std::arch::is_x86_feature_detected!("avx512f") => {
            // SAFETY: the CPU has AVX-512F (checked); the kernel indexes within the slices'
            // lengths, which `Linear::forward` and `Linear::packed` sized.
            unsafe { avx512::matmul_half(w, packed, x, rows, y) };
            return;
        }
        Packed::Half(packed)
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c") =>
        {
            // SAFETY: the CPU has the three features (checked); the kernel indexes within the
            // slices' lengths, which `Linear::forward` and `Linear::packed` sized.
            unsafe { avx2::matmul(w, packed, x, rows, y) };
            return;
        }
        _ => {}
    }
    portable_matmul(w, x, rows, y);
}

/// Every kernel walks the matrices in this order: blocks of rows, then panels (`step` at a time:
/// `tile` gets the first), then tiles.
fn for_each_tile(w: &Linear, rows: usize, step: usize, mut tile: impl FnMut(usize, usize, usize)) {
    let panels = w.outputs.div_ceil(PANEL);
    for block in (0..rows).step_by(ROW_BLOCK) {
        let end = (block + ROW_BLOCK).min(rows);
        for p in (0..panels).step_by(step) {
            let mut r = block;
            while r < end {
                let n = (end - r).min(TILE_ROWS);
                tile(p, r, n);
                r += n;
            }
        }
    }
}

/// Writes one tile's `n` rows of 16 sums to `y`, keeping only the panel's real outputs.
fn store(w: &Linear, p: usize, r: usize, sums: &[[f32; PANEL]], y: &mut [f32]) {
    let cols = (w.outputs - p * PANEL).min(PANEL);
    for (i, row) in sums.iter().enumerate() {
        let at = (r + i) * w.outputs + p * PANEL;
        if cols == PANEL {
            // A whole panel: a copy of known length, a register's store (not a call).
            y[at..][..PANEL].copy_from_slice(row);
        } else {
            y[at..][..cols].copy_from_slice(&row[..cols]);
        }
    }
}

/// The arithmetic of the SIMD kernels, one product at a time, for either packing.
fn portable_matmul(w: &Linear, x: &[f32], rows: usize, y: &mut [f32]) {
    let k = w.inputs;
    for_each_tile(w, rows, 1, |p, r, n| {
        let bias = &w.bias[p * PANEL..][..PANEL];
        let mut sums = [[0f32; PANEL]; TILE_ROWS];
        for (i, acc) in sums[..n].iter_mut().enumerate() {
            acc.copy_from_slice(bias);
            let xr = &x[(r + i) * k..][..k];
            match &w.weights {
                Packed::Half(packed) => {
                    let panel = &packed[p * k * PANEL..][..k * PANEL];
                    for (xv, wk) in xr.iter().zip(panel.chunks_exact(PANEL)) {
                        for j in 0..PANEL {
                            acc[j] += xv * wk[j].to_f32();
                        }
                    }
                }
                Packed::BfloatPairs(packed) => {
                    let pairs = k.div_ceil(2);
                    let panel = &packed[p * pairs * 2 * PANEL..][..pairs * 2 * PANEL];
                    for (xq, wq) in xr.chunks(2).zip(panel.chunks_exact(2 * PANEL)) {
                        let x0 = bfloat(xq[0]);
                        let x1 = xq.get(1).copied().map_or(0.0, bfloat);
                        for j in 0..PANEL {
                            acc[j] += x0 * wq[2 * j].to_f32() + x1 * wq[2 * j + 1].to_f32();
                        }
                    }
                }
            }
        }
        store(w, p, r, &sums[..n], y);
    });
}

/// With `avx512` below, the one `unsafe` of the workspace outside FFI: SIMD intrinsics.
/// Everything they read and write is sized by the safe caller; the tests check them against a
/// plain product.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Linear, PANEL, TILE_ROWS, for_each_tile, store};

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `packed` is `w`'s half-precision weights, `x`
    /// holds `rows × w.inputs` and `y` `rows × w.outputs`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn matmul(
        w: &Linear,
        packed: &[half::f16],
        x: &[f32],
        rows: usize,
        y: &mut [f32],
    ) {
        let k = w.inputs;
        for_each_tile(w, rows, 1, |p, r, n| {
            let mut sums = [[0f32; PANEL]; TILE_ROWS];
            // SAFETY: the panel has k × PANEL floats, rows r..r+n of x exist, and the features
            // were checked by the caller.
            unsafe {
                let panel = packed.as_ptr().add(p * k * PANEL);
                let bias = w.bias.as_ptr().add(p * PANEL);
                let xs = x.as_ptr().add(r * k);
                match n {
                    6 => tile::<6>(xs, k, panel, bias, &mut sums),
                    5 => tile::<5>(xs, k, panel, bias, &mut sums),
                    4 => tile::<4>(xs, k, panel, bias, &mut sums),
                    3 => tile::<3>(xs, k, panel, bias, &mut sums),
                    2 => tile::<2>(xs, k, panel, bias, &mut sums),
                    _ => tile::<1>(xs, k, panel, bias, &mut sums),
                }
            }
            store(w, p, r, &sums[..n], y);
        });
    }

    /// `R` rows of `x` (row stride `k`) times one panel, plus bias, into `sums[..R]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn tile<const R: usize>(
        x: *const f32,
        k: usize,
        panel: *const half::f16,
        bias: *const f32,
        sums: &mut [[f32; PANEL]; TILE_ROWS],
    ) {
        // SAFETY: the caller guarantees R rows of k floats at x and k × PANEL floats at panel.
        unsafe {
            let b0 = _mm256_loadu_ps(bias);
            let b1 = _mm256_loadu_ps(bias.add(8));
            let mut acc = [[b0, b1]; R];
            for kk in 0..k {
                let w0 = _mm256_cvtph_ps(_mm_loadu_si128(panel.add(kk * PANEL).cast()));
                let w1 = _mm256_cvtph_ps(_mm_loadu_si128(panel.add(kk * PANEL + 8).cast()));
                for (i, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_broadcast_ss(&*x.add(i * k + kk));
                    a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                    a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
                }
            }
            for (a, s) in acc.iter().zip(sums.iter_mut()) {
                _mm256_storeu_ps(s.as_mut_ptr(), a[0]);
                _mm256_storeu_ps(s.as_mut_ptr().add(8), a[1]);
            }
        }
    }
}

/// The AVX-512 kernels: a panel's 16 outputs are one 512-bit register. With BF16, one
/// `vdpbf16ps` adds two inputs' products to all 16 ([`Bfloat`]); without it (AVX-512F alone),
/// the half-precision weights are widened to f32 and one FMA adds one input's products
/// ([`Halves`]: the same chain of FMAs per output as the AVX2 kernel, so the same bits, with
/// half its instructions). Both walk the matrices alike ([`run`]).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Linear, PANEL, for_each_tile};

    /// # Safety
    /// The CPU must have AVX-512F and AVX-512 BF16; `packed` is `w`'s bfloat16 pairs, `x` holds
    /// `rows × w.inputs` and `y` `rows × w.outputs`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn matmul(
        w: &Linear,
        packed: &[half::bf16],
        x: &[f32],
        rows: usize,
        y: &mut [f32],
    ) {
        let k = w.inputs;
        let pairs = k.div_ceil(2);
        // The activations rounded to bfloat16, two inputs to a u32 like the weights' pairs.
        let mut paired = vec![0u32; rows * pairs];
        for (row, out) in x.chunks_exact(k).zip(paired.chunks_exact_mut(pairs)) {
            // SAFETY: the caller checked the features.
            unsafe { pair(row, out) };
        }
        // SAFETY: as the caller guarantees, with `paired` sized for `rows`.
        unsafe { run::<Bfloat>(w, packed, &paired, pairs, rows, y) };
    }

    /// # Safety
    /// The CPU must have AVX-512F; `packed` is `w`'s half-precision weights, `x` holds
    /// `rows × w.inputs` and `y` `rows × w.outputs`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn matmul_half(
        w: &Linear,
        packed: &[half::f16],
        x: &[f32],
        rows: usize,
        y: &mut [f32],
    ) {
        // SAFETY: as the caller guarantees.
        unsafe { run::<Halves>(w, packed, x, w.inputs, rows, y) };
    }

    /// One kernel's types and its tile: `R` rows of activations times `P` consecutive panels,
    /// plus bias, stored to the outputs (each panel's masked).
    trait Kernel {
        /// An activation step: a pair of bfloat16s (as a u32), or one f32.
        type X;
        /// A weight.
        type W;
        /// Weights per panel lane and activation step.
        const STEP: usize;

        /// # Safety
        /// The CPU has the kernel's features; the tile's pointers cover R rows of `depth`
        /// activations, P panels of `depth × STEP × PANEL` weights with their P × PANEL
        /// biases, and R rows of outputs, each panel's masked ones within the row.
        unsafe fn tile<const R: usize, const P: usize>(t: &Tile<Self::X, Self::W>);
    }

    /// Bfloat16 pairs by `vdpbf16ps`.
    struct Bfloat;
    /// Halves widened to f32, by FMA.
    struct Halves;

    /// Where one call of a tile kernel reads and writes.
    struct Tile<X, W> {
        /// The first row of activations (row stride `depth`).
        x: *const X,
        /// Activation steps per row: input pairs (bfloat16) or inputs (halves).
        depth: usize,
        /// The first panel (the others follow it, `depth × STEP × PANEL` apart).
        panel: *const W,
        /// Its biases (the others' follow).
        bias: *const f32,
        /// The first output of the first row (row stride `outputs`).
        y: *mut f32,
        outputs: usize,
        /// Each panel's real outputs (a matrix's last panel may have fewer than PANEL).
        masks: [u16; WIDE],
    }

    /// Panels per tile: 6 rows × 4 panels of sums, 4 weight registers and a broadcast are 29 of
    /// the 32 zmm registers. Each row's broadcast serves them all, and the independent sums hide
    /// the latency of the products even when a tile has fewer than six rows (a short query: one
    /// panel a tile was 25% slower). Each sum is the same chain of products as with one panel:
    /// the same bits.
    const WIDE: usize = 4;

    /// `y = x · packedᵀ + bias` by kernel `K`, tile by tile.
    ///
    /// # Safety
    /// The CPU has `K`'s features; `packed` is `w`'s weights packed for `K`, `x` holds `rows ×
    /// depth` activation steps and `y` `rows × w.outputs`.
    #[target_feature(enable = "avx512f")]
    unsafe fn run<K: Kernel>(
        w: &Linear,
        packed: &[K::W],
        x: &[K::X],
        depth: usize,
        rows: usize,
        y: &mut [f32],
    ) {
        let stride = depth * K::STEP * PANEL;
        let panels = w.outputs.div_ceil(PANEL);
        for_each_tile(w, rows, WIDE, |p, r, n| {
            // SAFETY: panels p.. and their biases are within `packed` and `w.bias`, rows r..r+n
            // of `x` and `y` exist, each panel's masked outputs within the row; the caller
            // checked the features.
            unsafe {
                let t = Tile {
                    x: x.as_ptr().add(r * depth),
                    depth,
                    panel: packed.as_ptr().add(p * stride),
                    bias: w.bias.as_ptr().add(p * PANEL),
                    y: y.as_mut_ptr().add(r * w.outputs + p * PANEL),
                    outputs: w.outputs,
                    masks: std::array::from_fn(|j| {
                        let cols = w.outputs.saturating_sub((p + j) * PANEL).min(PANEL);
                        ((1u32 << cols) - 1) as u16
                    }),
                };
                match (panels - p).min(WIDE) {
                    WIDE => rows_of::<K, WIDE>(n, &t),
                    3 => rows_of::<K, 3>(n, &t),
                    2 => rows_of::<K, 2>(n, &t),
                    _ => rows_of::<K, 1>(n, &t),
                }
            }
        });
    }

    /// `K`'s tile for `n` rows.
    #[inline]
    unsafe fn rows_of<K: Kernel, const P: usize>(n: usize, t: &Tile<K::X, K::W>) {
        // SAFETY: as for `Kernel::tile`, which the caller guarantees.
        unsafe {
            match n {
                6 => K::tile::<6, P>(t),
                5 => K::tile::<5, P>(t),
                4 => K::tile::<4, P>(t),
                3 => K::tile::<3, P>(t),
                2 => K::tile::<2, P>(t),
                _ => K::tile::<1, P>(t),
            }
        }
    }

    /// One row of activations rounded to bfloat16 (ties to even), input `2q` in the low half of
    /// `out[q]` and `2q + 1` in the high half; `out` is zero on entry, so an odd row's last
    /// pair is completed with zero.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pair(x: &[f32], out: &mut [u32]) {
        let whole = x.len() / 16;
        for c in 0..whole {
            // SAFETY: 16 floats at 16c are within x and 8 u32 at 8c within out (⌈len/2⌉ ≥ 8c + 8).
            unsafe {
                let rounded = _mm512_cvtneps_pbh(_mm512_loadu_ps(x.as_ptr().add(16 * c)));
                let bits: __m256i = std::mem::transmute(rounded);
                _mm256_storeu_si256(out.as_mut_ptr().add(8 * c).cast(), bits);
            }
        }
        for (i, v) in x.iter().enumerate().skip(16 * whole) {
            out[i / 2] |= u32::from(half::bf16::from_f32(*v).to_bits()) << (16 * (i % 2));
        }
    }

    /// Each panel's bias, in every row's sums.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn biases<X, W, const R: usize, const P: usize>(t: &Tile<X, W>) -> [[__m512; R]; P] {
        // SAFETY: the caller guarantees P × PANEL biases at bias.
        std::array::from_fn(|j| [unsafe { _mm512_loadu_ps(t.bias.add(j * PANEL)) }; R])
    }

    /// Stores `P` panels of `R` rows of sums to the tile's outputs (each panel's masked).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store<X, W, const R: usize, const P: usize>(t: &Tile<X, W>, acc: &[[__m512; R]; P]) {
        for (j, acc) in acc.iter().enumerate() {
            for (i, a) in acc.iter().enumerate() {
                // SAFETY: the caller guarantees R rows of outputs at y, each panel's masked
                // ones within the row.
                unsafe {
                    let at = t.y.add(i * t.outputs + j * PANEL);
                    _mm512_mask_storeu_ps(at, t.masks[j], *a);
                }
            }
        }
    }

    impl Kernel for Bfloat {
        type X = u32;
        type W = half::bf16;
        const STEP: usize = 2;

        #[target_feature(enable = "avx512f,avx512bf16")]
        #[inline]
        unsafe fn tile<const R: usize, const P: usize>(t: &Tile<u32, half::bf16>) {
            let stride = t.depth * 2 * PANEL;
            // SAFETY: as `Kernel::tile` requires.
            unsafe {
                let mut acc = biases::<_, _, R, P>(t);
                for q in 0..t.depth {
                    let wq: [__m512bh; P] = std::array::from_fn(|j| {
                        std::mem::transmute(_mm512_loadu_si512(
                            t.panel.add(j * stride + q * 2 * PANEL).cast(),
                        ))
                    });
                    for i in 0..R {
                        let xq: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                            *t.x.add(i * t.depth + q) as i32,
                        ));
                        for (sums, w) in acc.iter_mut().zip(&wq) {
                            sums[i] = _mm512_dpbf16_ps(sums[i], xq, *w);
                        }
                    }
                }
                store(t, &acc);
            }
        }
    }

    impl Kernel for Halves {
        type X = f32;
        type W = half::f16;
        const STEP: usize = 1;

        /// Per output, one FMA per input in order from the bias.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn tile<const R: usize, const P: usize>(t: &Tile<f32, half::f16>) {
            let stride = t.depth * PANEL;
            // SAFETY: as `Kernel::tile` requires.
            unsafe {
                let mut acc = biases::<_, _, R, P>(t);
                for kk in 0..t.depth {
                    let wk: [__m512; P] = std::array::from_fn(|j| {
                        _mm512_cvtph_ps(_mm256_loadu_si256(
                            t.panel.add(j * stride + kk * PANEL).cast(),
                        ))
                    });
                    for i in 0..R {
                        let xv = _mm512_set1_ps(*t.x.add(i * t.depth + kk));
                        for (sums, w) in acc.iter_mut().zip(&wk) {
                            sums[i] = _mm512_fmadd_ps(xv, *w, sums[i]);
                        }
                    }
                }
                store(t, &acc);
            }
        }
    }
}

/// Each value's bits, for tests that require the same arithmetic, not merely close results.
#[cfg(test)]
pub(crate) fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(weight: &[f32], bias: &[f32], x: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0f32; rows * n];
        for r in 0..rows {
            for o in 0..n {
                let mut s = bias[o] as f64;
                for i in 0..k {
                    s += x[r * k + i] as f64 * weight[o * k + i] as f64;
                }
                y[r * n + o] = s as f32;
            }
        }
        y
    }

    /// A deterministic pseudo-random sequence in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The product by every SIMD kernel of half-precision weights this CPU runs, whichever
    /// [`matmul`] dispatches to: each is the same chain of FMAs per output, so the same bits.
    #[allow(unsafe_code, unused_variables, unused_mut)]
    fn half_kernels(
        w: &Linear,
        packed: &[half::f16],
        x: &[f32],
        rows: usize,
    ) -> Vec<(&'static str, Vec<f32>)> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                let mut y = vec![f32::NAN; rows * w.outputs];
                // SAFETY: the CPU has AVX-512F; the slices are sized as `Linear::forward` sizes
                // them.
                unsafe { avx512::matmul_half(w, packed, x, rows, &mut y) };
                out.push(("AVX-512F", y));
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                let mut y = vec![f32::NAN; rows * w.outputs];
                // SAFETY: the CPU has the three features; sized as above.
                unsafe { avx2::matmul(w, packed, x, rows, &mut y) };
                out.push(("AVX2", y));
            }
        }
        out
    }

    #[test]
    fn every_kernel_matches_a_plain_product_at_every_tile_and_panel_remainder() {
        // Output counts off the panel width and row counts off the tile and block sizes.
        for &(rows, k, n) in &[
            (1, 7, 5),
            (5, 33, 16),
            (7, 64, 40),
            (13, 10, 17),
            (49, 20, 33),
            (100, 9, 48),
        ] {
            let (weight, bias, x) = (values(n * k, 1), values(n, 2), values(rows * k, 3));
            for pairs in [false, true] {
                // The plain product gets the numbers the kernels multiply: half-precision
                // weights, or bfloat16 weights and activations.
                let round = |v: &f32| {
                    if pairs {
                        bfloat(*v)
                    } else {
                        half::f16::from_f32(*v).to_f32()
                    }
                };
                let rounded: Vec<f32> = weight.iter().map(round).collect();
                let xs: Vec<f32> = if pairs {
                    x.iter().map(|v| bfloat(*v)).collect()
                } else {
                    x.clone()
                };
                let want = naive(&rounded, &bias, &xs, rows, k, n);
                let linear = Linear::packed(&weight, &bias, k, n, pairs);
                let mut fast = vec![f32::NAN; rows * n];
                matmul(&linear, &x, rows, &mut fast);
                let mut portable = vec![f32::NAN; rows * n];
                portable_matmul(&linear, &x, rows, &mut portable);
                if let Packed::Half(packed) = &linear.weights {
                    for (isa, got) in half_kernels(&linear, packed, &x, rows) {
                        assert_eq!(bits(&got), bits(&fast), "{isa} kernel, {rows}×{k}×{n}");
                    }
                }
                for (i, w) in want.iter().enumerate() {
                    assert!(
                        (fast[i] - w).abs() < 1e-4,
                        "dispatched kernel (pairs {pairs}), {rows}×{k}×{n} at {i}: {} vs {w}",
                        fast[i]
                    );
                    assert!(
                        (portable[i] - w).abs() < 1e-4,
                        "portable kernel (pairs {pairs}), {rows}×{k}×{n} at {i}: {} vs {w}",
                        portable[i]
                    );
                }
            }
        }
    }

    #[test]
    fn exp_and_erf_are_close_to_the_exact_values() {
        // erf's Taylor series in f64 is exact enough for |x| <= 4; beyond, erf is 1 in f32.
        let erf64 = |x: f64| {
            let (mut term, mut sum) = (x, x);
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        for i in -4000..=4000 {
            let x = i as f32 / 1000.0;
            let y = x * 20.0;
            let (e, got) = ((y as f64).exp(), exp(y) as f64);
            assert!(((got - e) / e).abs() < 3e-7, "exp({y}) = {got}, want {e}");
            let want = erf64(x as f64);
            assert!(
                (erf(x) as f64 - want).abs() < 5e-7,
                "erf({x}) = {}, want {want}",
                erf(x)
            );
        }
        assert_eq!(exp(-200.0), exp(-87.0));
        assert_eq!(erf(9.0), 1.0);
    }

    #[test]
    fn a_layer_norm_of_rows_at_once_computes_the_bits_of_each_row_alone() {
        let width = 37;
        let norm = LayerNorm {
            weight: values(width, 6),
            bias: values(width, 7),
            eps: 1e-12,
        };
        // Two blocks of rows and a remainder.
        let rows = 2 * NORM_ROWS + 3;
        let mut x: Vec<f32> = values(rows * width, 8)
            .iter()
            .map(|v| v * 3.0 + 0.5)
            .collect();
        let mut want = x.clone();
        for row in want.chunks_exact_mut(width) {
            let mean = row.iter().sum::<f32>() / width as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
            let inv = 1.0 / (var + norm.eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
                *v = (*v - mean) * inv * w + b;
            }
        }
        norm.apply(&mut x, width);
        assert_eq!(bits(&x), bits(&want));
    }

    /// Attention as it was written before it summed the weighted values in registers and read
    /// the keys and values in place.
    fn attention_key_by_key(qkv: &[f32], len: usize, h: usize, heads: usize) -> Vec<f32> {
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; len * h];
        let mut scores = vec![0f32; len];
        for head in 0..heads {
            for t in 0..len {
                let query = &qkv[t * 3 * h + head * d..][..d];
                let mut max = f32::NEG_INFINITY;
                for (s, score) in scores.iter_mut().enumerate() {
                    *score = dot(query, &qkv[s * 3 * h + h + head * d..][..d]) * scale;
                    max = max.max(*score);
                }
                let mut sum = 0.0;
                for s in scores.iter_mut() {
                    *s = exp(*s - max);
                    sum += *s;
                }
                let o = &mut out[t * h + head * d..][..d];
                for (s, score) in scores.iter().enumerate() {
                    let p = score / sum;
                    let value = &qkv[s * 3 * h + 2 * h + head * d..][..d];
                    for (o, v) in o.iter_mut().zip(value) {
                        *o += p * v;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_computes_the_bits_it_computed_through_copies_and_memory() {
        // Heads of 32 (whole lanes, as all-MiniLM-L6-v2's) and of 13 (a tail past the lanes).
        for (h, heads, len) in [(64, 2, 9), (39, 3, 17), (32, 1, 1)] {
            let qkv: Vec<f32> = values(len * 3 * h, 9).iter().map(|v| v * 4.0).collect();
            let mut got = vec![f32::NAN; len * h];
            attention(&qkv, len, h, heads, &mut got);
            let want = attention_key_by_key(&qkv, len, h, heads);
            assert_eq!(bits(&got), bits(&want), "h {h}, heads {heads}, len {len}");
        }
    }

    #[test]
    fn a_dot_product_counts_the_lanes_and_the_tail() {
        let (a, b) = (values(37, 4), values(37, 5));
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-5);
    }
}
