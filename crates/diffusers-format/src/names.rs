//! Tensor names and layouts: ours (Burn module paths, e.g. `down.1.blocks.0.emb_proj.weight`)
//! against diffusers' `UNet2DModel` state dict (`down_blocks.1.resnets.0.time_emb_proj.weight`).
//!
//! The modules correspond one to one (both are Ho et al.'s U-Net); the layouts differ in three
//! places: a Burn `Linear` weight is `[in, out]` where PyTorch's is `[out, in]`; our attention
//! computes q, k and v with one 1×1 conv (`[3C, C, 1, 1]`, rows q then k then v) where diffusers
//! has three `Linear`s (`to_q`, `to_k`, `to_v`); and our output projection is a 1×1 conv where
//! diffusers' `to_out.0` is a `Linear`. GroupNorm's `gamma`/`beta` are PyTorch's `weight`/`bias`.

use crate::tensors::{HostTensor, Tensors};

/// How one tensor of ours is made from diffusers' tensors (and back).
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The same values and layout under another name.
    Same(String),
    /// A `Linear` weight, transposed.
    Transposed(String),
    /// A `Linear` weight `[out, in]` used as a 1×1 conv `[out, in, 1, 1]`.
    Conv1x1(String),
    /// Several tensors stacked along the first dimension (q, k, v); `conv` when the result is
    /// a 1×1 conv weight.
    Stacked {
        /// The parts, in order.
        parts: Vec<String>,
        /// Whether the stack is a 1×1 conv weight (else a bias).
        conv: bool,
    },
}

/// The diffusers tensor(s) that our tensor `ours` comes from; `None` for a name that is not
/// one of ours.
pub fn source(ours: &str) -> Option<Source> {
    let parts: Vec<&str> = ours.split('.').collect();
    match parts.as_slice() {
        ["time_embed_1", p] => linear("time_embedding.linear_1", p),
        ["time_embed_2", p] => linear("time_embedding.linear_2", p),
        ["class_embed", "weight"] => Some(Source::Same("class_embedding.weight".into())),
        [conv @ ("conv_in" | "conv_out"), p @ ("weight" | "bias")] => {
            Some(Source::Same(format!("{conv}.{p}")))
        }
        ["norm_out", p] => group_norm("conv_norm_out", p),
        [dir @ ("down" | "up"), i, "blocks", j, rest @ ..] => {
            res_block(&format!("{dir}_blocks.{i}.resnets.{j}"), rest)
        }
        [dir @ ("down" | "up"), i, "attentions", j, rest @ ..] => {
            attention(&format!("{dir}_blocks.{i}.attentions.{j}"), rest)
        }
        ["down", i, "downsample", "conv", p @ ("weight" | "bias")] => Some(Source::Same(format!(
            "down_blocks.{i}.downsamplers.0.conv.{p}"
        ))),
        ["up", i, "upsample", "conv", p @ ("weight" | "bias")] => {
            Some(Source::Same(format!("up_blocks.{i}.upsamplers.0.conv.{p}")))
        }
        ["mid_block_1", rest @ ..] => res_block("mid_block.resnets.0", rest),
        ["mid_block_2", rest @ ..] => res_block("mid_block.resnets.1", rest),
        ["mid_attention", rest @ ..] => attention("mid_block.attentions.0", rest),
        _ => None,
    }
}

fn linear(prefix: &str, p: &str) -> Option<Source> {
    match p {
        "weight" => Some(Source::Transposed(format!("{prefix}.weight"))),
        "bias" => Some(Source::Same(format!("{prefix}.bias"))),
        _ => None,
    }
}

fn group_norm(prefix: &str, p: &str) -> Option<Source> {
    match p {
        "gamma" => Some(Source::Same(format!("{prefix}.weight"))),
        "beta" => Some(Source::Same(format!("{prefix}.bias"))),
        _ => None,
    }
}

fn res_block(prefix: &str, rest: &[&str]) -> Option<Source> {
    match rest {
        [norm @ ("norm1" | "norm2"), p] => group_norm(&format!("{prefix}.{norm}"), p),
        [conv @ ("conv1" | "conv2"), p @ ("weight" | "bias")] => {
            Some(Source::Same(format!("{prefix}.{conv}.{p}")))
        }
        ["emb_proj", p] => linear(&format!("{prefix}.time_emb_proj"), p),
        ["skip", p @ ("weight" | "bias")] => {
            Some(Source::Same(format!("{prefix}.conv_shortcut.{p}")))
        }
        _ => None,
    }
}

fn attention(prefix: &str, rest: &[&str]) -> Option<Source> {
    match rest {
        ["norm", p] => group_norm(&format!("{prefix}.group_norm"), p),
        ["qkv", p @ ("weight" | "bias")] => Some(Source::Stacked {
            parts: ["to_q", "to_k", "to_v"]
                .iter()
                .map(|n| format!("{prefix}.{n}.{p}"))
                .collect(),
            conv: *p == "weight",
        }),
        ["proj", "weight"] => Some(Source::Conv1x1(format!("{prefix}.to_out.0.weight"))),
        ["proj", "bias"] => Some(Source::Same(format!("{prefix}.to_out.0.bias"))),
        _ => None,
    }
}

/// The name checkpoints saved before diffusers 0.14 give an attention projection
/// (`query`, `key`, `value`, `proj_attn`), which diffusers still renames on load.
fn old_name(name: &str) -> Option<String> {
    [
        (".to_q.", ".query."),
        (".to_k.", ".key."),
        (".to_v.", ".value."),
        (".to_out.0.", ".proj_attn."),
    ]
    .iter()
    .find(|(new, _)| name.contains(new))
    .map(|(new, old)| name.replace(new, old))
}

/// Builds our tensors (`expected`: our names and shapes) from diffusers' state dict `theirs`.
/// Every expected tensor must be there with its shape, and every one of theirs must be used:
/// the error names the first that is not.
pub fn to_ours(expected: &[(String, Vec<usize>)], theirs: &Tensors) -> Result<Tensors, String> {
    let mut used = std::collections::BTreeSet::new();
    let mut fetch = |name: &str| -> Result<&HostTensor, String> {
        let found = theirs
            .get_key_value(name)
            .or_else(|| old_name(name).and_then(|old| theirs.get_key_value(&old)));
        match found {
            Some((key, t)) => {
                used.insert(key.clone());
                Ok(t)
            }
            None => Err(format!("missing tensor `{name}`")),
        }
    };
    let mut out = Tensors::new();
    for (name, shape) in expected {
        let src = source(name).ok_or_else(|| format!("no diffusers name for `{name}`"))?;
        let t = match &src {
            Source::Same(n) => fetch(n)?.clone(),
            Source::Transposed(n) => {
                let t = fetch(n)?;
                if t.shape.len() != 2 {
                    return Err(format!("`{n}` has shape {:?}; expected 2-D", t.shape));
                }
                t.transposed()
            }
            Source::Conv1x1(n) => {
                let t = fetch(n)?;
                let mut s = t.shape.clone();
                s.extend([1, 1]);
                t.clone().reshaped(s)
            }
            Source::Stacked { parts, conv } => {
                // Each part is one `Linear` of the expected stack: [C, C] weights or [C] biases.
                let part_shape: Vec<usize> = match (shape.first(), *conv) {
                    (Some(&rows), true) if shape.len() == 4 => vec![rows / parts.len(), shape[1]],
                    (Some(&rows), false) if shape.len() == 1 => vec![rows / parts.len()],
                    _ => return Err(format!("no stacked layout for our `{name}` {shape:?}")),
                };
                let mut data = Vec::new();
                for n in parts {
                    let t = fetch(n)?;
                    if t.shape != part_shape {
                        return Err(format!(
                            "tensor `{n}` has shape {:?}; the config needs {part_shape:?}",
                            t.shape
                        ));
                    }
                    data.extend_from_slice(&t.data);
                }
                HostTensor::new(shape.clone(), data)
            }
        };
        if &t.shape != shape {
            let theirs_name = match &src {
                Source::Same(n) | Source::Transposed(n) | Source::Conv1x1(n) => n.clone(),
                Source::Stacked { parts, .. } => parts.join(" + "),
            };
            return Err(format!(
                "tensor `{theirs_name}` gives shape {:?}; the config needs {shape:?}",
                t.shape
            ));
        }
        out.insert(name.clone(), t);
    }
    if let Some(extra) = theirs.keys().find(|k| !used.contains(*k)) {
        let more = theirs.len() - used.len();
        return Err(format!(
            "unexpected tensor `{extra}`{} — does config.json describe these weights?",
            if more > 1 {
                format!(" (and {} more)", more - 1)
            } else {
                String::new()
            }
        ));
    }
    Ok(out)
}

/// Our tensors under diffusers' names and layouts (the inverse of [`to_ours`], new names).
pub fn to_diffusers(ours: &Tensors) -> Result<Tensors, String> {
    let mut out = Tensors::new();
    for (name, t) in ours {
        let src = source(name).ok_or_else(|| format!("no diffusers name for `{name}`"))?;
        match src {
            Source::Same(n) => {
                out.insert(n, t.clone());
            }
            Source::Transposed(n) => {
                out.insert(n, t.transposed());
            }
            Source::Conv1x1(n) => {
                let s = t.shape[..2].to_vec();
                out.insert(n, t.clone().reshaped(s));
            }
            Source::Stacked { parts, conv } => {
                let rows = t.shape[0] / parts.len();
                let per = t.data.len() / parts.len();
                let shape = if conv {
                    vec![rows, t.shape[1]]
                } else {
                    vec![rows]
                };
                for (k, n) in parts.into_iter().enumerate() {
                    let data = t.data[k * per..(k + 1) * per].to_vec();
                    out.insert(n, HostTensor::new(shape.clone(), data));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_as_diffusers_names_them() {
        let same = |s: &str| Some(Source::Same(s.into()));
        assert_eq!(
            source("down.1.blocks.0.norm1.gamma"),
            same("down_blocks.1.resnets.0.norm1.weight")
        );
        assert_eq!(
            source("up.2.blocks.1.skip.bias"),
            same("up_blocks.2.resnets.1.conv_shortcut.bias")
        );
        assert_eq!(
            source("mid_block_2.emb_proj.weight"),
            Some(Source::Transposed(
                "mid_block.resnets.1.time_emb_proj.weight".into()
            ))
        );
        assert_eq!(
            source("down.0.downsample.conv.weight"),
            same("down_blocks.0.downsamplers.0.conv.weight")
        );
        assert_eq!(
            source("mid_attention.proj.weight"),
            Some(Source::Conv1x1(
                "mid_block.attentions.0.to_out.0.weight".into()
            ))
        );
        assert_eq!(source("norm_out.beta"), same("conv_norm_out.bias"));
        assert_eq!(source("down.0.blocks.0.dropout.weight"), None);
        assert_eq!(
            old_name("up_blocks.1.attentions.0.to_out.0.bias").as_deref(),
            Some("up_blocks.1.attentions.0.proj_attn.bias")
        );
    }

    #[test]
    fn attention_projections_stack_and_split_back() {
        let c = 2;
        let mut ours = Tensors::new();
        let qkv: Vec<f32> = (0..3 * c * c).map(|v| v as f32).collect();
        ours.insert(
            "mid_attention.qkv.weight".into(),
            HostTensor::new(vec![3 * c, c, 1, 1], qkv.clone()),
        );
        ours.insert(
            "mid_attention.qkv.bias".into(),
            HostTensor::new(vec![3 * c], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        );
        let theirs = to_diffusers(&ours).unwrap();
        assert_eq!(
            theirs["mid_block.attentions.0.to_k.weight"],
            HostTensor::new(vec![c, c], qkv[4..8].to_vec())
        );
        assert_eq!(
            theirs["mid_block.attentions.0.to_v.bias"].data,
            vec![5.0, 6.0]
        );
        let expected: Vec<(String, Vec<usize>)> = ours
            .iter()
            .map(|(n, t)| (n.clone(), t.shape.clone()))
            .collect();
        assert_eq!(to_ours(&expected, &theirs).unwrap(), ours);
        // A tensor too many, or one missing, is named.
        let mut extra = theirs.clone();
        extra.insert("x.weight".into(), HostTensor::new(vec![1], vec![0.0]));
        assert!(to_ours(&expected, &extra)
            .unwrap_err()
            .contains("unexpected tensor `x.weight`"));
        // q, k and v must each be one C × C projection, not rows that merely add up.
        let mut uneven = theirs.clone();
        uneven.insert(
            "mid_block.attentions.0.to_q.weight".into(),
            HostTensor::new(vec![3, c], vec![0.0; 3 * c]),
        );
        uneven.insert(
            "mid_block.attentions.0.to_k.weight".into(),
            HostTensor::new(vec![1, c], vec![0.0; c]),
        );
        assert!(to_ours(&expected, &uneven)
            .unwrap_err()
            .contains("`mid_block.attentions.0.to_q.weight` has shape [3, 2]"));
        let mut scalar = theirs.clone();
        scalar.insert(
            "mid_block.attentions.0.to_q.bias".into(),
            HostTensor::new(vec![], vec![0.0]),
        );
        assert!(to_ours(&expected, &scalar)
            .unwrap_err()
            .contains("has shape []"));
        let mut missing = theirs;
        missing.remove("mid_block.attentions.0.to_q.weight");
        assert!(to_ours(&expected, &missing)
            .unwrap_err()
            .contains("missing tensor `mid_block.attentions.0.to_q.weight`"));
    }
}
