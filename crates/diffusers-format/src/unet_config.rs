//! diffusers' `UNet2DModel` config (`unet/config.json`) and its translation to and from our
//! [`UNetConfig`].
//!
//! Every field diffusers 0.42.1 writes is known here with diffusers' default. A value our U-Net
//! cannot express (Fourier or learned time embedding, skip or resnet resampling blocks, a class
//! embedding other than a table, another activation, …) is an [`Error::Unsupported`] naming
//! the field, never a silently different model.

use diffusion::{TimeMode, UNetConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The diffusers version whose format this writes and was tested against.
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// `UNet2DModel`'s constructor arguments, as its `config.json` stores them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffusersUNetConfig {
    /// Fields of the file this version does not know, which were ignored (diffusers ignores
    /// them too, with a warning); the importer reports them.
    #[serde(skip)]
    pub ignored: Vec<String>,
    /// `UNet2DModel`.
    #[serde(rename = "_class_name", default = "unet_class")]
    pub class_name: String,
    /// The diffusers version that wrote the file.
    #[serde(rename = "_diffusers_version", default)]
    pub diffusers_version: String,
    /// Where the file came from (Hub downloads); not used.
    #[serde(rename = "_name_or_path", default, skip_serializing)]
    pub name_or_path: Option<String>,
    /// Image size: an int, or `[height, width]`.
    #[serde(default)]
    pub sample_size: Option<Value>,
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Whether the input is mapped 2x − 1 first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// `positional`, `fourier` or `learned`.
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    /// Width of the time embedding (default 4 × `block_out_channels[0]`).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// Frequency shift of the sinusoids.
    #[serde(default)]
    pub freq_shift: f64,
    /// Cosines first.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// One entry per level.
    #[serde(default = "default_down_blocks")]
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2D` or null.
    #[serde(default = "mid_block")]
    pub mid_block_type: Option<String>,
    /// One entry per level, lowest resolution first.
    #[serde(default = "default_up_blocks")]
    pub up_block_types: Vec<String>,
    /// Channels per level.
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// ResNets per down block (one more per up block).
    #[serde(default = "two")]
    pub layers_per_block: usize,
    /// Output scale of the middle block.
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    /// 1, or 0 for TensorFlow-style bottom/right padding.
    #[serde(default = "one")]
    pub downsample_padding: usize,
    /// `conv` or `resnet`.
    #[serde(default = "conv")]
    pub downsample_type: String,
    /// `conv` or `resnet`.
    #[serde(default = "conv")]
    pub upsample_type: String,
    /// Dropout in the ResNets.
    #[serde(default)]
    pub dropout: f64,
    /// The activation.
    #[serde(default = "silu")]
    pub act_fn: String,
    /// Channels per head; null: one head.
    #[serde(default = "eight")]
    pub attention_head_dim: Option<usize>,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: Option<usize>,
    /// GroupNorm groups of the middle attention.
    #[serde(default)]
    pub attn_norm_num_groups: Option<usize>,
    /// GroupNorm ε.
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    /// `default` or `scale_shift`.
    #[serde(default = "default_shift")]
    pub resnet_time_scale_shift: String,
    /// Attention in the middle block.
    #[serde(default = "yes")]
    pub add_attention: bool,
    /// null, `timestep` or `identity`.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Rows of the class-embedding table.
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// For learned time embeddings only.
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
}

fn unet_class() -> String {
    "UNet2DModel".into()
}
fn three() -> usize {
    3
}
fn two() -> usize {
    2
}
fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn eight() -> Option<usize> {
    Some(8)
}
fn thirty_two() -> Option<usize> {
    Some(32)
}
fn yes() -> bool {
    true
}
fn norm_eps() -> f64 {
    1e-5
}
fn positional() -> String {
    "positional".into()
}
fn conv() -> String {
    "conv".into()
}
fn silu() -> String {
    "silu".into()
}
fn default_shift() -> String {
    "default".into()
}
fn mid_block() -> Option<String> {
    Some("UNetMidBlock2D".into())
}
fn default_down_blocks() -> Vec<String> {
    [
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_up_blocks() -> Vec<String> {
    [
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_block_out_channels() -> Vec<usize> {
    vec![224, 448, 672, 896]
}

impl DiffusersUNetConfig {
    /// Parses `config.json` text; `path` names the file in errors. Fields diffusers 0.42.1
    /// does not have are left out and listed in `ignored`, as diffusers itself ignores them.
    pub fn from_json(text: &str, path: &str) -> Result<Self> {
        let fail = |e: serde_json::Error| Error::Config {
            path: path.into(),
            reason: e.to_string(),
        };
        let mut value: Value = serde_json::from_str(text).map_err(fail)?;
        let known = serde_json::to_value(
            serde_json::from_str::<Self>("{}").expect("every field has a default"),
        )
        .expect("serialises");
        let mut ignored = Vec::new();
        if let (Value::Object(map), Value::Object(known)) = (&mut value, &known) {
            map.retain(|k, _| {
                let keep = k.starts_with('_') || known.contains_key(k);
                if !keep {
                    ignored.push(k.clone());
                }
                keep
            });
        }
        let mut config: Self = serde_json::from_value(value).map_err(fail)?;
        config.ignored = ignored;
        Ok(config)
    }

    /// The config as diffusers writes it (pretty JSON, keys in order).
    pub fn to_json(&self) -> String {
        let value = serde_json::to_value(self).expect("a config always serialises");
        let mut text = serde_json::to_string_pretty(&sorted(value)).expect("JSON serialises");
        text.push('\n');
        text
    }

    /// Our U-Net for this config, or the first field it cannot express.
    pub fn to_ours(&self, path: &str) -> Result<UNetConfig> {
        let unsupported = |field: &str, value: &dyn std::fmt::Debug, why: &str| {
            Err(Error::Unsupported {
                path: path.into(),
                field: field.into(),
                value: format!("{value:?}"),
                why: why.into(),
            })
        };
        if self.class_name != "UNet2DModel" {
            return unsupported("_class_name", &self.class_name, "only UNet2DModel");
        }
        let resolution = match &self.sample_size {
            Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v > 0) => {
                n.as_u64().unwrap() as usize
            }
            Some(Value::Array(hw))
                if hw.len() == 2 && hw[0] == hw[1] && hw[0].as_u64().is_some_and(|v| v > 0) =>
            {
                hw[0].as_u64().unwrap() as usize
            }
            other => {
                return unsupported(
                    "sample_size",
                    other,
                    "a positive int, or [h, w] with h = w: square images",
                )
            }
        };
        if self.out_channels != self.in_channels {
            return unsupported(
                "out_channels",
                &self.out_channels,
                "must equal in_channels: the model predicts ε or v per channel (learned variance is not supported)",
            );
        }
        if self.center_input_sample {
            return unsupported("center_input_sample", &true, "only false");
        }
        if self.time_embedding_type != "positional" {
            return unsupported(
                "time_embedding_type",
                &self.time_embedding_type,
                "only positional (sinusoidal)",
            );
        }
        let levels = self.block_out_channels.len();
        if levels == 0 || self.block_out_channels.contains(&0) {
            return unsupported(
                "block_out_channels",
                &self.block_out_channels,
                "at least one level, every width positive",
            );
        }
        if levels > 16 {
            return unsupported("block_out_channels", &levels, "at most 16 levels");
        }
        if self.down_block_types.len() != levels || self.up_block_types.len() != levels {
            return Err(Error::Config {
                path: path.into(),
                reason: format!(
                    "block_out_channels has {levels} levels, down_block_types {} and up_block_types {}",
                    self.down_block_types.len(),
                    self.up_block_types.len()
                ),
            });
        }
        let mut attention_resolutions = Vec::new();
        // diffusers drops a `UNetRes` prefix from block type names (its old names).
        let block = |t: &str| t.strip_prefix("UNetRes").unwrap_or(t).to_string();
        for (i, t) in self.down_block_types.iter().enumerate() {
            match block(t).as_str() {
                "DownBlock2D" => {}
                "AttnDownBlock2D" => attention_resolutions.push(resolution >> i),
                _ => {
                    return unsupported(
                        &format!("down_block_types[{i}]"),
                        t,
                        "DownBlock2D or AttnDownBlock2D",
                    )
                }
            }
        }
        let mut up_attention_resolutions = Vec::new();
        for (i, t) in self.up_block_types.iter().enumerate() {
            // Up blocks run from the lowest resolution to the highest.
            let level = levels - 1 - i;
            match block(t).as_str() {
                "UpBlock2D" => {}
                "AttnUpBlock2D" => up_attention_resolutions.insert(0, resolution >> level),
                _ => {
                    return unsupported(
                        &format!("up_block_types[{i}]"),
                        t,
                        "UpBlock2D or AttnUpBlock2D",
                    )
                }
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2D") => {}
            other => return unsupported("mid_block_type", &other, "only UNetMidBlock2D"),
        }
        if self.mid_block_scale_factor != 1.0 {
            return unsupported(
                "mid_block_scale_factor",
                &self.mid_block_scale_factor,
                "only 1",
            );
        }
        for (field, value) in [
            ("downsample_type", &self.downsample_type),
            ("upsample_type", &self.upsample_type),
        ] {
            if value != "conv" {
                return unsupported(field, value, "only conv");
            }
        }
        // diffusers lower-cases the name and takes swish for SiLU.
        if !matches!(self.act_fn.to_lowercase().as_str(), "silu" | "swish") {
            return unsupported("act_fn", &self.act_fn, "only silu (swish)");
        }
        if self.class_embed_type.is_some() {
            return unsupported(
                "class_embed_type",
                &self.class_embed_type,
                "only null (a table of num_class_embeds rows)",
            );
        }
        let num_classes = match self.num_class_embeds {
            None => None,
            Some(n) if n >= 2 => Some(n - 1),
            Some(n) => {
                return unsupported(
                    "num_class_embeds",
                    &n,
                    "at least 2: the classes and the last row, the null class of guidance",
                )
            }
        };
        if self.downsample_padding > 1 {
            return unsupported("downsample_padding", &self.downsample_padding, "0 or 1");
        }
        let time_mode = match self.resnet_time_scale_shift.as_str() {
            "default" => TimeMode::Add,
            "scale_shift" => TimeMode::Film,
            other => {
                return unsupported("resnet_time_scale_shift", &other, "default or scale_shift")
            }
        };
        let Some(norm_groups) = self.norm_num_groups else {
            return unsupported("norm_num_groups", &None::<usize>, "a number of groups");
        };
        // diffusers' middle attention normalises with attn_norm_num_groups, or without it with
        // the ResNets' groups under `default` and not at all under `scale_shift`.
        if self.attn_norm_num_groups == Some(0) {
            return unsupported(
                "attn_norm_num_groups",
                &0,
                "a positive number of groups, or null",
            );
        }
        let mid_attention_norm_groups = match (self.attn_norm_num_groups, time_mode) {
            (Some(g), _) if g == norm_groups => None,
            (Some(g), _) => Some(g),
            (None, TimeMode::Add) => None,
            (None, TimeMode::Film) => Some(0),
        };
        let base = self.block_out_channels[0];
        let mut u = UNetConfig::new(
            self.in_channels,
            resolution,
            base,
            vec![],
            attention_resolutions,
        )
        .with_num_res_blocks(self.layers_per_block)
        .with_dropout(self.dropout)
        .with_num_classes(num_classes)
        .with_time_mode(time_mode)
        .with_norm_groups(norm_groups)
        .with_norm_eps(self.norm_eps);
        u.block_out_channels = Some(self.block_out_channels.clone());
        if up_attention_resolutions != u.attention_resolutions {
            u.up_attention_resolutions = Some(up_attention_resolutions);
        }
        u.mid_attention = (!self.add_attention).then_some(false);
        u.attention_head_dim = self.attention_head_dim;
        u.mid_attention_norm_groups = if self.add_attention {
            mid_attention_norm_groups
        } else {
            None
        };
        u.flip_sin_to_cos = self.flip_sin_to_cos.then_some(true);
        u.freq_shift = (self.freq_shift != 1.0).then_some(self.freq_shift);
        u.downsample_padding = (self.downsample_padding != 1).then_some(self.downsample_padding);
        // diffusers takes `time_embedding_dim or 4 · C₀`: 0 is the default too.
        u.time_embedding_dim = self.time_embedding_dim.filter(|&d| d != 0 && d != 4 * base);
        u.validate().map_err(|e| Error::Config {
            path: path.into(),
            reason: e.to_string(),
        })?;
        Ok(u)
    }

    /// diffusers' config for our U-Net, or why diffusers cannot express it.
    pub fn from_ours(u: &UNetConfig) -> std::result::Result<Self, String> {
        u.validate().map_err(|e| e.to_string())?;
        let channels = u.level_channels();
        if channels[0] != u.base_channels {
            // Ours widens from conv_in's base_channels inside the first level; diffusers' conv_in
            // gives block_out_channels[0] directly.
            return Err(format!(
                "the first level has {} channels but conv_in gives {} (channel_mults[0] ≠ 1)",
                channels[0], u.base_channels
            ));
        }
        let levels = channels.len();
        let attention_head_dim = match u.attention_head_dim {
            Some(d) => Some(d),
            None if u.num_heads == 1 => None,
            None => {
                // diffusers fixes the head size; ours the head count: the same only if every
                // attention block has the same width.
                let mut widths: Vec<usize> = (0..levels)
                    .filter(|&i| {
                        let r = u.resolution >> i;
                        u.attention_resolutions.contains(&r)
                            || u.up_attention_resolutions().contains(&r)
                    })
                    .map(|i| channels[i])
                    .collect();
                if u.has_mid_attention() {
                    widths.push(channels[levels - 1]);
                }
                widths.dedup();
                match widths.as_slice() {
                    [] => None,
                    [w] => Some(w / u.num_heads),
                    _ => {
                        return Err(format!(
                            "num_heads = {} over attention blocks of {widths:?} channels has no \
                             fixed head size (diffusers' attention_head_dim)",
                            u.num_heads
                        ))
                    }
                }
            }
        };
        let groups = u.mid_attention_norm_groups.unwrap_or(u.norm_groups);
        let attn_norm_num_groups = match (groups, u.time_mode) {
            _ if !u.has_mid_attention() => None,
            (0, TimeMode::Film) => None,
            (0, TimeMode::Add) => {
                return Err(
                    "a middle attention without GroupNorm needs resnet_time_scale_shift = \
                     scale_shift in diffusers (this model adds time: default)"
                        .into(),
                )
            }
            (g, TimeMode::Add) if g == u.norm_groups => None,
            (g, _) => Some(g),
        };
        let block_names = |down: bool| -> Vec<String> {
            (0..levels)
                .map(|i| {
                    let r = u.resolution >> i;
                    let (attn, name) = if down {
                        (u.attention_resolutions.contains(&r), "DownBlock2D")
                    } else {
                        (u.up_attention_resolutions().contains(&r), "UpBlock2D")
                    };
                    if attn {
                        format!("Attn{name}")
                    } else {
                        name.to_string()
                    }
                })
                .collect()
        };
        let mut up_block_types = block_names(false);
        up_block_types.reverse();
        Ok(Self {
            ignored: Vec::new(),
            class_name: unet_class(),
            diffusers_version: DIFFUSERS_VERSION.into(),
            name_or_path: None,
            sample_size: Some(Value::from(u.resolution)),
            in_channels: u.in_channels,
            out_channels: u.in_channels,
            center_input_sample: false,
            time_embedding_type: positional(),
            time_embedding_dim: u.time_embedding_dim,
            freq_shift: u.freq_shift.unwrap_or(1.0),
            flip_sin_to_cos: u.flip_sin_to_cos.unwrap_or(false),
            down_block_types: block_names(true),
            mid_block_type: mid_block(),
            up_block_types,
            block_out_channels: channels,
            layers_per_block: u.num_res_blocks,
            mid_block_scale_factor: 1.0,
            downsample_padding: u.downsample_padding.unwrap_or(1),
            downsample_type: conv(),
            upsample_type: conv(),
            dropout: u.dropout,
            act_fn: silu(),
            attention_head_dim,
            norm_num_groups: Some(u.norm_groups),
            attn_norm_num_groups,
            norm_eps: u.norm_eps,
            resnet_time_scale_shift: match u.time_mode {
                TimeMode::Add => "default".into(),
                TimeMode::Film => "scale_shift".into(),
            },
            add_attention: u.has_mid_attention(),
            class_embed_type: None,
            num_class_embeds: u.num_classes.map(|n| n + 1),
            num_train_timesteps: None,
        })
    }
}

/// `value` with every object's keys in order, as diffusers writes its configs.
pub(crate) fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        // diffusers writes integral numbers as ints (freq_shift: 1, not 1.0).
        Value::Number(n)
            if n.as_f64()
                .is_some_and(|f| f.fract() == 0.0 && f.abs() < 1e15)
                && !n.is_i64()
                && !n.is_u64() =>
        {
            Value::from(n.as_f64().unwrap() as i64)
        }
        other => other,
    }
}
