//! Imported diffusers models against diffusers' own outputs, and export round trips.
//!
//! `tests/data/<case>/` are pipeline folders written by diffusers 0.42.1 and
//! `tests/data/<case>.reference.json` what diffusers computed on them
//! (`scripts/make-diffusers-fixtures.py`): the model output at two timesteps and 10 DDIM steps
//! (η = 0) from a fixed x_T. Each imported model must give ε within 1e-4 (relative to the
//! largest value) and the DDIM result within 2/255 of a pixel.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use diffusers_format::{export, import, tensors, DiffusersUNetConfig, StoredDtype};
use diffusion::sampler::{DdimSchedulerConfig, Scheduler, SchedulerState};
use diffusion::weights::{load_model, save_model};
use diffusion::{ModelConfig, NormalTensor, UNet};
use serde_json::Value;

const CASES: [&str; 4] = [
    "defaults-rgb",
    "google-style",
    "grey-two-levels",
    "class-conditional",
];

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn scratch(name: &str) -> PathBuf {
    let d =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("diffusers-format-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Reference {
    shape: [usize; 4],
    x_t: Vec<f32>,
    labels: Option<Vec<usize>>,
    eps: Vec<(f64, Vec<f32>)>,
    ddim_timesteps: Vec<usize>,
    ddim: Vec<f32>,
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn reference(path: &Path) -> Reference {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let eps = v["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let t = t.as_u64().unwrap();
            (t as f64, floats(&v["eps"][t.to_string()]))
        })
        .collect();
    Reference {
        shape: shape.try_into().unwrap(),
        x_t: floats(&v["x_t"]),
        labels: v["class_labels"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_u64().unwrap() as usize).collect()),
        eps,
        ddim_timesteps: v["ddim_timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect(),
        ddim: floats(&v["ddim"]),
    }
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec().unwrap()
}

/// max |a − b| / max |b|.
fn relative(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Our outputs on the reference's inputs: ε at each timestep, then 10 DDIM steps configured
/// as diffusers' `DDIMScheduler.from_config` of the folder's scheduler.
fn our_outputs(
    model: &UNet,
    config: &ModelConfig,
    r: &Reference,
    device: &Device,
) -> (Vec<Vec<f32>>, Vec<usize>, Vec<f32>) {
    let x_t = Tensor::<4>::from_data(TensorData::new(r.x_t.clone(), r.shape), device);
    let n = r.shape[0];
    let labels = r.labels.as_deref();
    let eps = r
        .eps
        .iter()
        .map(|(t, _)| values(model.forward(x_t.clone(), &vec![*t; n], labels)))
        .collect();
    let clip = config.clip_range();
    let ddim = DdimSchedulerConfig {
        num_inference_steps: r.ddim_timesteps.len(),
        clip_sample: clip.is_some(),
        clip_sample_range: clip.unwrap_or(1.0),
        ..Default::default()
    }
    .init(&config.schedule.build().unwrap(), config.prediction_type)
    .unwrap();
    let mut x = x_t;
    let mut state = SchedulerState::default();
    for (i, &t) in ddim.timesteps().iter().enumerate() {
        let out = model.forward(x.clone(), &vec![t as f64; n], labels);
        x = ddim.step(&mut state, out, i, x, None).prev_sample;
    }
    (eps, ddim.timesteps().to_vec(), values(x))
}

#[test]
fn imported_models_match_diffusers_outputs() {
    let device = Device::flex();
    for case in CASES {
        let imported = import(&data().join(case), &device).unwrap();
        let r = reference(&data().join(format!("{case}.reference.json")));
        let (eps, timesteps, ddim) = our_outputs(&imported.model, &imported.config, &r, &device);
        for ((t, want), got) in r.eps.iter().zip(&eps) {
            let rel = relative(got, want);
            assert!(
                rel <= 1e-4,
                "{case}: ε at t = {t} differs by {rel:e} (relative)"
            );
        }
        assert_eq!(timesteps, r.ddim_timesteps, "{case}: DDIM timesteps");
        // Pixels: x ∈ [-1, 1] ↦ 127.5 (x + 1), so 2/255 of the range is 2/127.5 in x.
        let d = max_abs_diff(&ddim, &r.ddim);
        assert!(
            d * 127.5 <= 2.0,
            "{case}: after 10 DDIM steps the images differ by {:.3}/255",
            d * 127.5
        );
        eprintln!(
            "{case}: ε rel {:.1e} / {:.1e}, DDIM max diff {:.4}/255",
            relative(&eps[0], &r.eps[0].1),
            relative(&eps[1], &r.eps[1].1),
            d * 127.5
        );
    }
}

#[test]
fn what_each_fixture_exercises_was_imported() {
    let device = Device::flex();
    let get = |case: &str| import(&data().join(case), &device).unwrap();
    let defaults = get("defaults-rgb");
    let u = &defaults.config.unet;
    assert_eq!(
        (u.in_channels, u.flip_sin_to_cos, u.freq_shift),
        (3, Some(true), Some(0.0))
    );
    assert_eq!(u.attention_head_dim, Some(4));
    assert_eq!(defaults.stored, StoredDtype::Bf16);
    let google = get("google-style");
    let u = &google.config.unet;
    assert_eq!(
        (u.flip_sin_to_cos, u.freq_shift, u.downsample_padding),
        (None, None, Some(0))
    );
    assert_eq!(google.stored, StoredDtype::F16);
    assert_eq!(
        google.config.schedule.beta_schedule,
        diffusion::BetaSchedule::cosine()
    );
    let grey = get("grey-two-levels");
    let u = &grey.config.unet;
    assert_eq!(u.attention_resolutions, vec![6, 3]);
    assert_eq!(u.up_attention_resolutions, Some(vec![3]));
    assert_eq!(
        u.mid_attention_norm_groups,
        Some(0),
        "scale_shift: no GroupNorm in the middle"
    );
    assert_eq!(grey.config.clip_sample, Some(false));
    let cond = get("class-conditional");
    let u = &cond.config.unet;
    assert_eq!(
        (u.num_classes, u.mid_attention, u.time_embedding_dim),
        (Some(3), Some(false), Some(24))
    );
    assert_eq!(
        cond.config.prediction_type,
        diffusion::PredictionType::VPrediction
    );
}

#[test]
fn export_gives_back_diffusers_tensors_and_config_and_reloads_bit_exactly() {
    let device = Device::flex();
    for case in CASES {
        let src = data().join(case);
        let imported = import(&src, &device).unwrap();
        let out = scratch(case);
        // Our own format: save and load back, identical outputs.
        let ours = out.join("ours.safetensors");
        save_model(&imported.model, &imported.config, &ours, false).unwrap();
        let (reloaded, cfg) = load_model(&ours, &device).unwrap();
        assert_eq!(cfg, imported.config);
        // diffusers' format: the tensors diffusers wrote (renamed where it renames them),
        // the same config fields, and importing the export gives the same model bit for bit.
        let exported = out.join("pipeline");
        export(&reloaded, &cfg, &exported, false).unwrap();
        let read = |p: &Path| tensors::read(&std::fs::read(p).unwrap()).unwrap().0;
        let theirs = read(&src.join("unet/diffusion_pytorch_model.safetensors"));
        let back = read(&exported.join("unet/diffusion_pytorch_model.safetensors"));
        assert_eq!(back.len(), theirs.len(), "{case}: tensor count");
        for (name, t) in &theirs {
            let renamed = name
                .replace(".query.", ".to_q.")
                .replace(".key.", ".to_k.")
                .replace(".value.", ".to_v.")
                .replace(".proj_attn.", ".to_out.0.");
            assert_eq!(back.get(&renamed), Some(t), "{case}: {renamed}");
        }
        let cfg_of = |p: &Path| {
            let text = std::fs::read_to_string(p.join("unet/config.json")).unwrap();
            let mut c = DiffusersUNetConfig::from_json(&text, "c").unwrap();
            c.diffusers_version.clear();
            c.dropout = 0.0;
            c
        };
        let (mine, original) = (cfg_of(&exported), cfg_of(&src));
        assert_eq!(
            mine.to_ours("x").unwrap(),
            original.to_ours("x").unwrap(),
            "{case}: config"
        );
        let again = import(&exported, &device).unwrap();
        assert_eq!(again.config, imported.config, "{case}");
        let x = diffusion::NoiseRng::new(3).normal_tensor(
            [
                2,
                cfg.unet.in_channels,
                cfg.unet.resolution,
                cfg.unet.resolution,
            ],
            &device,
        );
        let labels = cfg.unet.num_classes.map(|n| vec![0, n]);
        let a = values(
            imported
                .model
                .forward(x.clone(), &[500.0, 20.0], labels.as_deref()),
        );
        let b = values(
            again
                .model
                .forward(x.clone(), &[500.0, 20.0], labels.as_deref()),
        );
        let c = values(reloaded.forward(x, &[500.0, 20.0], labels.as_deref()));
        assert_eq!(a, b, "{case}: export → import is bit-exact");
        assert_eq!(a, c, "{case}: save → load is bit-exact");
        // The same model gives the same bytes.
        let first =
            std::fs::read(exported.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
        export(&again.model, &again.config, &exported, false).unwrap();
        assert_eq!(
            std::fs::read(exported.join("unet/diffusion_pytorch_model.safetensors")).unwrap(),
            first
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// A bare `unet/` folder in scratch directory `name`: the defaults-rgb weights with its
/// config changed by `edit`.
fn edited_unet_folder(name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let src = data().join("defaults-rgb/unet");
    let dir = scratch(name);
    std::fs::create_dir_all(dir.join("unet")).unwrap();
    let mut c: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut c);
    std::fs::write(dir.join("unet/config.json"), c.to_string()).unwrap();
    std::fs::copy(
        src.join("diffusion_pytorch_model.safetensors"),
        dir.join("unet/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    dir
}

#[test]
fn unsupported_configs_are_one_line_errors_naming_the_field() {
    let device = Device::flex();
    let cases: [(&str, Value, &str); 9] = [
        (
            "block_out_channels",
            serde_json::json!([]),
            "block_out_channels",
        ),
        ("attn_norm_num_groups", 0.into(), "attn_norm_num_groups"),
        (
            "time_embedding_type",
            "fourier".into(),
            "time_embedding_type",
        ),
        (
            "down_block_types",
            serde_json::json!(["DownBlock2D", "AttnSkipDownBlock2D"]),
            "down_block_types[1]",
        ),
        ("class_embed_type", "timestep".into(), "class_embed_type"),
        ("out_channels", 6.into(), "out_channels"),
        ("act_fn", "gelu".into(), "act_fn"),
        ("sample_size", serde_json::json!([8, 16]), "sample_size"),
        ("upsample_type", "resnet".into(), "upsample_type"),
    ];
    for (field, value, named) in cases {
        let dir = edited_unet_folder(&format!("bad-{field}"), |c| c[field] = value);
        let e = import(&dir.join("unet"), &device)
            .err()
            .expect(field)
            .to_string();
        assert!(e.contains(named) && !e.contains('\n'), "{field}: {e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // What diffusers accepts under other names imports as the same model.
    let reference = import(&data().join("defaults-rgb"), &device)
        .unwrap()
        .config
        .unet;
    let dir = edited_unet_folder("aliases", |c| {
        c["act_fn"] = "swish".into();
        c["down_block_types"] = serde_json::json!(["UNetResDownBlock2D", "AttnDownBlock2D"]);
        c["time_embedding_dim"] = 0.into();
    });
    assert_eq!(
        import(&dir.join("unet"), &device).unwrap().config.unet,
        reference
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // A field diffusers does not know is ignored, as diffusers ignores it, with a note.
    let dir = edited_unet_folder("unknown-field", |c| c["some_new_field"] = 1.into());
    let imported = import(&dir.join("unet"), &device).unwrap();
    assert!(
        imported
            .notes
            .iter()
            .any(|n| n.contains("field `some_new_field`") && n.contains("ignored")),
        "{:?}",
        imported.notes
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // Weights that do not fit the config name the tensor; a folder that is neither kind says so.
    let dir = edited_unet_folder("bad-weights", |c| c["layers_per_block"] = 2.into());
    let e = import(&dir.join("unet"), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("missing tensor `down_blocks.0.resnets.1."),
        "{e}"
    );
    let e = import(&dir, &device).err().unwrap().to_string();
    assert!(e.contains("neither a pipeline folder"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A small model of our own design (FiLM, one head, 3 classes + null, ε, linear β) with seeded
/// random f16 weights (the portable RNG: the same on every platform), whose export diffusers ran
/// once: `tests/data/exported/ours-tiny/` is what [`export`] wrote and
/// `tests/data/exported/ours-tiny.diffusers-eps.json` what `UNet2DModel.from_pretrained` of it
/// computed (`make-diffusers-fixtures.py --check-export`). Regenerate the folder with
/// `cargo test --release --workspace --test diffusers -- --ignored make_export_fixture`.
fn ours_tiny(device: &Device) -> (UNet, ModelConfig) {
    let unet = diffusion::UNetConfig::new(1, 8, 8, vec![1, 1], vec![4])
        .with_num_res_blocks(1)
        .with_num_classes(Some(3))
        .with_norm_groups(4);
    let config = ModelConfig::new(unet);
    let model = config.unet.init(device).unwrap().randomize(21, 0.2);
    let half = diffusion::weights::weights_to_bytes(&model, true).unwrap();
    let model =
        diffusion::weights::load_model_from_bytes(&config, half, "ours-tiny", device).unwrap();
    (model, config)
}

#[test]
#[ignore = "writes the export fixture; run once, then make-diffusers-fixtures.py --check-export"]
fn make_export_fixture() {
    let device = Device::flex();
    let (model, config) = ours_tiny(&device);
    export(&model, &config, &data().join("exported/ours-tiny"), true).unwrap();
}

#[test]
fn our_export_runs_in_diffusers_with_the_same_forward() {
    let device = Device::flex();
    let dir = data().join("exported");
    let (model, config) = ours_tiny(&device);
    // Exporting today gives the folder diffusers checked, byte for byte.
    let out = scratch("ours-tiny");
    export(&model, &config, &out, true).unwrap();
    for file in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ] {
        assert_eq!(
            std::fs::read(out.join(file)).unwrap(),
            std::fs::read(dir.join("ours-tiny").join(file)).unwrap(),
            "{file}"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
    let r = reference(&dir.join("ours-tiny.diffusers-eps.json"));
    assert_eq!(
        r.labels.as_deref(),
        Some(&[0, 3][..]),
        "a class and the null row"
    );
    let (eps, timesteps, ddim) = our_outputs(&model, &config, &r, &device);
    for ((t, want), got) in r.eps.iter().zip(&eps) {
        let rel = relative(got, want);
        assert!(
            rel <= 1e-5,
            "ε at t = {t} differs from diffusers' by {rel:e} (relative)"
        );
    }
    assert_eq!(timesteps, r.ddim_timesteps);
    let d = max_abs_diff(&ddim, &r.ddim);
    assert!(d * 127.5 <= 2.0, "DDIM differs by {:.3}/255", d * 127.5);
    eprintln!(
        "ours-tiny in diffusers: ε rel {:.1e} / {:.1e}, DDIM max diff {:.4}/255",
        relative(&eps[0], &r.eps[0].1),
        relative(&eps[1], &r.eps[1].1),
        d * 127.5
    );
}

#[test]
fn models_diffusers_cannot_express_are_refused_at_export() {
    let device = Device::flex();
    let out = scratch("refused");
    // A first level wider than conv_in (channel_mults[0] = 2).
    let wide = ModelConfig::new(
        diffusion::UNetConfig::new(1, 8, 8, vec![2, 2], vec![]).with_norm_groups(4),
    );
    let model = wide.unet.init(&device).unwrap();
    let e = export(&model, &wide, &out, false).unwrap_err().to_string();
    assert!(e.contains("channel_mults[0]") && !e.contains('\n'), "{e}");
    // A cosine schedule other than diffusers' squaredcos_cap_v2.
    let mut cosine = ours_tiny(&device).1;
    cosine.schedule.beta_schedule = diffusion::BetaSchedule::Cosine {
        s: 0.02,
        max_beta: 0.999,
    };
    let model = cosine.unet.init(&device).unwrap();
    let e = export(&model, &cosine, &out, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("squaredcos_cap_v2"), "{e}");
    // Nothing was written.
    assert!(!out.join("model_index.json").exists());
    std::fs::remove_dir_all(&out).unwrap();
}
