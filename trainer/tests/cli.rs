//! The `trainer` binary end to end: happy paths on a tiny model, and bad input that must give
//! one clear error line, exit code 1, no panic and no partial output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .expect("runs")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("trainer-cli-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Asserts a clean failure whose single error line contains `needle`.
fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(needle), "`{needle}` not in: {err}");
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "failed: {err}");
    err
}

const TINY: &[&str] = &[
    "--base-channels",
    "32",
    "--channel-mults",
    "1,2",
    "--num-res-blocks",
    "1",
    "--attention-resolutions",
    "14",
    "--batch-size",
    "4",
    "--limit",
    "16",
    "--sample-steps",
    "2",
    "--grid-cols",
    "1",
    "--checkpoint-every",
    "2",
];

/// A tiny trained run, shared by the tests that need weights or checkpoints.
fn run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tmp("run").join("r");
        let mut args = vec!["train", "--steps", "4", "--out", dir.to_str().unwrap()];
        args.extend(TINY);
        ok(&trainer(&args));
        dir
    })
}

#[test]
fn train_sample_export_schedule_forward() {
    let dir = run();
    assert!(dir.join("ema.safetensors").is_file() && dir.join("ema.json").is_file());
    assert!(dir.join("checkpoints/step-00000004/state.json").is_file());
    let out = tmp("happy");
    let w = dir.join("ema.safetensors");
    let grid = out.join("g.png");
    let npy = out.join("g.npy");
    let traj = out.join("t.png");
    ok(&trainer(&[
        "sample",
        "--weights",
        w.to_str().unwrap(),
        "--class",
        "3",
        "--num",
        "2",
        "--steps",
        "3",
        "--out",
        grid.to_str().unwrap(),
        "--npy",
        npy.to_str().unwrap(),
        "--trajectory",
        traj.to_str().unwrap(),
    ]));
    assert!(grid.is_file() && traj.is_file());
    // 2 images × 1 × 28 × 28 f32 after a 128-byte header.
    assert_eq!(std::fs::metadata(&npy).unwrap().len(), 128 + 2 * 784 * 4);
    // Training wrote the dataset's class names into the config; a model whose config names
    // its classes takes a name for --class (the same samples as its index).
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ema.json")).unwrap()).unwrap();
    assert_eq!(config["class_names"][3], "3");
    let words = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    let mut named = config.clone();
    named["class_names"] = serde_json::json!(words);
    let nw = out.join("named.safetensors");
    std::fs::copy(&w, &nw).unwrap();
    std::fs::write(out.join("named.json"), named.to_string()).unwrap();
    let by_name = out.join("by-name.npy");
    // Two images of `class` from `weights` in 3 steps, into `npy`.
    let sample_to = |weights: &Path, class: &str, npy: &Path| {
        trainer(&[
            "sample",
            "--weights",
            weights.to_str().unwrap(),
            "--class",
            class,
            "--num",
            "2",
            "--steps",
            "3",
            "--out",
            out.join("s.png").to_str().unwrap(),
            "--npy",
            npy.to_str().unwrap(),
        ])
    };
    ok(&sample_to(&nw, "Three", &by_name));
    assert_eq!(
        std::fs::read(&by_name).unwrap(),
        std::fs::read(&npy).unwrap()
    );
    fails_with(
        &sample_to(&nw, "eleven", &by_name),
        "a class name (zero, one, two,",
    );
    let f16 = out.join("half.safetensors");
    ok(&trainer(&[
        "export",
        "--checkpoint",
        dir.to_str().unwrap(),
        "--out",
        f16.to_str().unwrap(),
        "--f16",
    ]));
    assert!(std::fs::metadata(&f16).unwrap().len() < std::fs::metadata(&w).unwrap().len() * 6 / 10);
    // Converting the exported f32 weights gives the same f16 weights (the same samples; the
    // files' headers list Burn's metadata in no fixed order, so bytes may differ there).
    let converted = out.join("converted.safetensors");
    let convert = |to: &Path| {
        trainer(&[
            "export",
            "--weights",
            w.to_str().unwrap(),
            "--out",
            to.to_str().unwrap(),
            "--f16",
        ])
    };
    ok(&convert(&converted));
    assert_eq!(
        std::fs::metadata(&converted).unwrap().len(),
        std::fs::metadata(&f16).unwrap().len()
    );
    assert_eq!(
        std::fs::read_to_string(out.join("converted.json")).unwrap(),
        std::fs::read_to_string(dir.join("ema.json")).unwrap()
    );
    let sample_npy = |weights: &Path, npy: &Path| {
        ok(&sample_to(weights, "1", npy));
        std::fs::read(npy).unwrap()
    };
    assert_eq!(
        sample_npy(&converted, &out.join("c1.npy")),
        sample_npy(&f16, &out.join("c2.npy"))
    );
    fails_with(&convert(&w), "--out is the --weights file itself");
    ok(&trainer(&[
        "sample",
        "--weights",
        w.to_str().unwrap(),
        "--class",
        "all",
        "--num",
        "1",
        "--sampler",
        "sde-dpmsolver++",
        "--steps",
        "3",
        "--out",
        out.join("dpm.png").to_str().unwrap(),
    ]));
    assert!(out.join("dpm.png").is_file());
    ok(&trainer(&[
        "sample",
        "--weights",
        f16.to_str().unwrap(),
        "--class",
        "none",
        "--num",
        "1",
        "--steps",
        "2",
        "--out",
        out.join("h.png").to_str().unwrap(),
    ]));
    let csv = out.join("s.csv");
    ok(&trainer(&[
        "schedule",
        "--schedule",
        "cosine",
        "--csv",
        csv.to_str().unwrap(),
        "--plot",
        out.join("s.png").to_str().unwrap(),
    ]));
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 1001);
    ok(&trainer(&[
        "forward",
        "--index",
        "5",
        "--out",
        out.join("f.png").to_str().unwrap(),
    ]));
    assert!(out.join("f.png").is_file());
}

#[test]
fn resume_continues_to_more_steps() {
    let dir = tmp("resume").join("r");
    let mut args = vec!["train", "--steps", "2", "--out", dir.to_str().unwrap()];
    args.extend(TINY);
    ok(&trainer(&args));
    ok(&trainer(&[
        "train",
        "--resume",
        dir.to_str().unwrap(),
        "--steps",
        "4",
        "--out",
        dir.to_str().unwrap(),
    ]));
    assert!(dir.join("checkpoints/step-00000004").is_dir());
    // Precision changes results, so a resumed run keeps the checkpoint's.
    fails_with(
        &trainer(&[
            "train",
            "--resume",
            dir.to_str().unwrap(),
            "--precision",
            "bf16",
            "--steps",
            "6",
            "--out",
            dir.to_str().unwrap(),
        ]),
        "--precision bf16: the checkpoint was trained in f32",
    );
    assert!(!dir.join("checkpoints/step-00000006").exists());
}

#[test]
fn missing_or_corrupt_datasets() {
    let out = tmp("data");
    let run_out = out.join("never");
    fails_with(
        &trainer(&[
            "train",
            "--dataset",
            "cifar10:/nonexistent",
            "--out",
            run_out.to_str().unwrap(),
        ]),
        "/nonexistent/data_batch_1.bin",
    );
    // Truncated IDX files.
    let fm = out.join("fm");
    std::fs::create_dir_all(&fm).unwrap();
    let mut images = vec![0u8, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 28, 0, 0, 0, 28];
    images.extend(vec![0u8; 500]);
    std::fs::write(fm.join("train-images-idx3-ubyte.gz"), &images).unwrap();
    std::fs::write(
        fm.join("train-labels-idx1-ubyte.gz"),
        [0u8, 0, 8, 1, 0, 0, 0, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0],
    )
    .unwrap();
    fails_with(
        &trainer(&[
            "train",
            "--dataset",
            &format!("fashion-mnist:{}", fm.display()),
            "--out",
            run_out.to_str().unwrap(),
        ]),
        "truncated",
    );
    // A truncated CIFAR batch.
    let cf = out.join("cifar");
    std::fs::create_dir_all(&cf).unwrap();
    std::fs::write(cf.join("data_batch_1.bin"), vec![1u8; 5000]).unwrap();
    fails_with(
        &trainer(&[
            "train",
            "--dataset",
            &format!("cifar10:{}", cf.display()),
            "--out",
            run_out.to_str().unwrap(),
        ]),
        "not a whole number of CIFAR-10 records",
    );
    // A non-image in an image folder.
    let folder = out.join("folder");
    std::fs::create_dir_all(folder.join("a")).unwrap();
    std::fs::write(folder.join("a/x.png"), b"not a png").unwrap();
    fails_with(
        &trainer(&[
            "train",
            "--dataset",
            &format!("folder:{}", folder.display()),
            "--out",
            run_out.to_str().unwrap(),
        ]),
        "x.png: not a readable PNG/JPEG image",
    );
    assert!(!run_out.exists(), "no partial output");
}

#[test]
fn bad_flags() {
    let out = tmp("flags");
    let r = out.join("r");
    fails_with(
        &trainer(&["train", "--steps", "0", "--out", r.to_str().unwrap()]),
        "steps",
    );
    fails_with(
        &trainer(&["train", "--lr=-1", "--out", r.to_str().unwrap()]),
        "lr",
    );
    fails_with(
        &trainer(&[
            "train",
            "--base-channels",
            "24",
            "--out",
            r.to_str().unwrap(),
        ]),
        "norm_groups = 32 does not divide",
    );
    fails_with(
        &trainer(&["train", "--precision", "fp16", "--out", r.to_str().unwrap()]),
        "unknown precision `fp16` (expected f32 or bf16)",
    );
    // Data parallel: what cannot work is one line naming it.
    let rs = r.to_str().unwrap();
    for (devices, expect) in [
        ("cpu,cuda:0", "mixes device kinds"),
        ("cuda:0,cuda:0", "names cuda:0 twice"),
        ("wgpu,wgpu", "wgpu has no collective operations"),
        ("cpu,,cpu", "an empty name"),
        ("cuda:7", "CUDA"),
    ] {
        fails_with(
            &trainer(&["train", "--devices", devices, "--out", rs]),
            expect,
        );
    }
    fails_with(
        &trainer(&[
            "train",
            "--devices",
            "cpu,cpu,cpu",
            "--batch-size",
            "8",
            "--dropout",
            "0",
            "--out",
            rs,
        ]),
        "--batch-size 8 does not split evenly over 3 devices",
    );
    // (A usage error, as clap reports them: exit code 2.)
    let both = trainer(&[
        "train",
        "--devices",
        "cpu,cpu",
        "--device",
        "cpu",
        "--out",
        rs,
    ]);
    assert_eq!(both.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&both.stderr)
        .contains("'--devices <DEVICES>' cannot be used with '--device <DEVICE>'"));
    assert!(!r.exists());
    // The server's batching, admission and device flags.
    fails_with(&trainer(&["serve", "--max-batch", "0"]), "--max-batch");
    fails_with(&trainer(&["serve", "--queue", "4"]), "--queue is gone");
    fails_with(&trainer(&["serve", "--max-rows", "0"]), "--max-rows");
    fails_with(
        &trainer(&["serve", "--max-batch", "8", "--max-request-rows", "9"]),
        "--max-request-rows must lie in 1..=--max-batch",
    );
    fails_with(
        &trainer(&["serve", "--device", "tpu"]),
        "unknown device `tpu`",
    );
    let w = run().join("ema.safetensors");
    let png = out.join("x.png");
    fails_with(
        &trainer(&[
            "sample",
            "--weights",
            w.to_str().unwrap(),
            "--class",
            "12",
            "--out",
            png.to_str().unwrap(),
        ]),
        "--class 12 --num 8: invalid sampler setting: class 12 is out of range",
    );
    fails_with(
        &trainer(&[
            "sample",
            "--weights",
            w.to_str().unwrap(),
            "--steps",
            "0",
            "--out",
            png.to_str().unwrap(),
        ]),
        "num_inference_steps = 0",
    );
    fails_with(
        &trainer(&[
            "sample",
            "--weights",
            w.to_str().unwrap(),
            "--sampler",
            "dpm",
            "--out",
            png.to_str().unwrap(),
        ]),
        "unknown sampler `dpm` (expected one of ddim, ddpm, dpmsolver++, sde-dpmsolver++)",
    );
    fails_with(
        &trainer(&[
            "sample",
            "--weights",
            w.to_str().unwrap(),
            "--karras-sigmas",
            "--out",
            png.to_str().unwrap(),
        ]),
        "use_karras_sigmas applies to dpmsolver++",
    );
    fails_with(
        &trainer(&[
            "sample",
            "--weights",
            w.to_str().unwrap(),
            "--sampler",
            "ddim",
            "--eta",
            "2",
            "--out",
            png.to_str().unwrap(),
        ]),
        "eta = 2",
    );
    fails_with(
        &trainer(&[
            "sample",
            "--weights",
            "/nonexistent/m.safetensors",
            "--out",
            png.to_str().unwrap(),
        ]),
        "/nonexistent/m.json",
    );
    assert!(!png.exists());
}

#[test]
fn bad_weights_and_checkpoints() {
    let out = tmp("weights");
    let run = run();
    // Weights of another config: the config says 64 base channels.
    let w = out.join("other.safetensors");
    std::fs::copy(run.join("ema.safetensors"), &w).unwrap();
    let cfg = std::fs::read_to_string(run.join("ema.json"))
        .unwrap()
        .replace("\"base_channels\": 32", "\"base_channels\": 64");
    std::fs::write(out.join("other.json"), cfg).unwrap();
    let png = out.join("x.png");
    fails_with(
        &trainer(&[
            "sample",
            "--weights",
            w.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ]),
        "Shape mismatch for '",
    );
    // A truncated weights file.
    let t = out.join("trunc.safetensors");
    let bytes = std::fs::read(run.join("ema.safetensors")).unwrap();
    std::fs::write(&t, &bytes[..bytes.len() / 3]).unwrap();
    std::fs::copy(run.join("ema.json"), out.join("trunc.json")).unwrap();
    fails_with(
        &trainer(&[
            "sample",
            "--weights",
            t.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ]),
        "trunc.safetensors",
    );
    assert!(!png.exists());
    // A truncated checkpoint.
    let ck = out.join("ck");
    let src = run.join("checkpoints/step-00000004");
    std::fs::create_dir_all(&ck).unwrap();
    for f in ["state.json", "ema.bpk", "optim.bpk"] {
        std::fs::copy(src.join(f), ck.join(f)).unwrap();
    }
    let model = std::fs::read(src.join("model.bpk")).unwrap();
    std::fs::write(ck.join("model.bpk"), &model[..model.len() / 2]).unwrap();
    fails_with(
        &trainer(&[
            "train",
            "--resume",
            ck.to_str().unwrap(),
            "--steps",
            "6",
            "--out",
            out.join("r2").to_str().unwrap(),
        ]),
        "model.bpk",
    );
    fails_with(
        &trainer(&[
            "export",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--out",
            out.join("e.safetensors").to_str().unwrap(),
        ]),
        "model.bpk",
    );
    fails_with(
        &trainer(&[
            "train",
            "--resume",
            out.join("nothing").to_str().unwrap(),
            "--out",
            out.join("r3").to_str().unwrap(),
        ]),
        "no checkpoint here",
    );
}

#[test]
fn serve_png_is_byte_identical_to_sample_and_sigterm_is_graceful() {
    use std::io::{BufRead, BufReader, Read, Write};
    let w = run().join("ema.safetensors");
    let out = tmp("serve");
    let png = out.join("one.png");
    ok(&trainer(&[
        "sample",
        "--weights",
        w.to_str().unwrap(),
        "--class",
        "3",
        "--num",
        "1",
        "--seed",
        "7",
        "--steps",
        "5",
        "--guidance",
        "2",
        "--scale",
        "1",
        "--pad",
        "0",
        "--out",
        png.to_str().unwrap(),
    ]));
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args([
            "serve",
            "--weights",
            w.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server output").unwrap();
        if let Some(a) = line.strip_prefix("listening on http://") {
            break a.to_string();
        }
    };
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET /v1/generate.png?class_label=3&seed=7&num_inference_steps=5&guidance_scale=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw[..split])
    );
    assert_eq!(
        &raw[split + 4..],
        std::fs::read(&png).unwrap().as_slice(),
        "byte-identical PNG"
    );
    // SIGTERM: a clean exit.
    send_sigterm(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Sends SIGTERM with the `kill` command (no libc dependency).
fn send_sigterm(pid: u32) {
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// The shipped weights, by absolute path (tests run in the crate directory).
fn shipped() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../weights/mnist.safetensors")
        .display()
        .to_string()
}

#[test]
fn eval_and_classifier_bad_input() {
    let dir = tmp("eval-bad");
    let out = dir.join("report");
    let o = out.to_str().unwrap();
    // No classifier file: the error says how to make one.
    let missing = dir.join("none.safetensors");
    fails_with(
        &trainer(&[
            "eval",
            "--weights",
            &shipped(),
            "--n",
            "4",
            "--no-inception",
            "--classifier",
            missing.to_str().unwrap(),
            "--out",
            o,
        ]),
        "train-classifier",
    );
    // No Inception weights: the error names the fetch command.
    fails_with(
        &trainer(&[
            "eval",
            "--weights",
            &shipped(),
            "--n",
            "4",
            "--no-classifier",
            "--inception-weights",
            missing.to_str().unwrap(),
            "--out",
            o,
        ]),
        "fetch-inception.py",
    );
    fails_with(
        &trainer(&[
            "eval",
            "--weights",
            &shipped(),
            "--n",
            "1",
            "--no-inception",
            "--no-classifier",
            "--out",
            o,
        ]),
        "n ≥ 2",
    );
    fails_with(
        &trainer(&[
            "eval",
            "--weights",
            &shipped(),
            "--steps",
            "0",
            "--no-inception",
            "--no-classifier",
            "--out",
            o,
        ]),
        "step",
    );
    fails_with(
        &trainer(&[
            "eval",
            "--weights",
            &shipped(),
            "--n",
            "4",
            "--no-inception",
            "--no-classifier",
            "--dataset",
            "fashion-mnist:/nonexistent",
            "--out",
            o,
        ]),
        "/nonexistent",
    );
    assert!(!out.exists(), "no partial output");
    fails_with(
        &trainer(&[
            "train-classifier",
            "--dataset",
            "cifar10:/nonexistent",
            "--out",
            dir.join("c.safetensors").to_str().unwrap(),
        ]),
        "/nonexistent",
    );
    fails_with(
        &trainer(&[
            "train-classifier",
            "--epochs",
            "0",
            "--out",
            dir.join("c.safetensors").to_str().unwrap(),
        ]),
        "epochs",
    );
    assert!(!dir.join("c.safetensors").exists());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn eval_writes_a_report() {
    let dir = tmp("eval-ok");
    let out = dir.join("report");
    let w = shipped();
    let cls = w.replace("mnist.safetensors", "classifier-mnist10k.safetensors");
    // A small evaluation at w = 2 into `out`, with the sampler settings in `sampler`.
    let eval = |out: &Path, sampler: &[&str]| {
        let mut args = vec![
            "eval",
            "--weights",
            &w,
            "--classifier",
            &cls,
            "--n",
            "10",
            "--batch",
            "10",
            "--guidance",
            "2",
            "--no-inception",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(sampler);
        trainer(&args)
    };
    let stdout = eval(&out, &["--steps", "4"]);
    ok(&stdout);
    let md = String::from_utf8_lossy(&stdout.stdout);
    assert!(md.contains("| samples, w = 2 |"), "{md}");
    for f in ["eval.json", "eval.md", "samples-w2.png"] {
        assert!(out.join(f).exists(), "{f}");
    }
    // The same evaluation with DPM-Solver++ (Karras), then both side by side.
    let out2 = dir.join("report-dpm");
    ok(&eval(
        &out2,
        &[
            "--sampler",
            "dpmsolver++",
            "--karras-sigmas",
            "--steps",
            "3",
        ],
    ));
    let cmp = dir.join("compare");
    let stdout = trainer(&[
        "eval-compare",
        out.join("eval.json").to_str().unwrap(),
        out2.join("eval.json").to_str().unwrap(),
        "--out",
        cmp.to_str().unwrap(),
    ]);
    ok(&stdout);
    let md = String::from_utf8_lossy(&stdout.stdout);
    assert!(
        md.contains("| ddpm | 4 |") && md.contains("| dpmsolver++ karras | 3 |"),
        "{md}"
    );
    for f in [
        "compare.json",
        "compare.md",
        "domain-fid-vs-model-calls.png",
    ] {
        assert!(cmp.join(f).exists(), "{f}");
    }
    // No Inception FID was computed, so there is no Inception plot.
    assert!(!cmp.join("fid-vs-model-calls.png").exists());
    fails_with(
        &trainer(&["eval-compare", dir.join("none.json").to_str().unwrap()]),
        "none.json",
    );
    std::fs::remove_dir_all(dir).ok();
}

/// `--dataset` alone picks the shipped classifier of its kind, and a classifier of another kind
/// is refused: MNIST and Fashion-MNIST images have the same shape, so nothing else would notice.
#[test]
fn eval_picks_the_classifier_of_the_dataset() {
    let dir = tmp("eval-kind");
    let w = shipped();
    // Run from the repository root, where the default `weights/classifier-KIND` paths point.
    let eval = |classifier: Option<&str>, out: &Path| {
        let mut args = vec![
            "eval",
            "--weights",
            &w,
            "--dataset",
            "fashion-mnist",
            "--n",
            "10",
            "--batch",
            "10",
            "--steps",
            "2",
            "--no-inception",
            "--out",
            out.to_str().unwrap(),
        ];
        if let Some(c) = classifier {
            args.extend_from_slice(&["--classifier", c]);
        }
        Command::new(env!("CARGO_BIN_EXE_trainer"))
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .args(&args)
            .output()
            .expect("runs")
    };
    let picked = dir.join("picked");
    ok(&eval(None, &picked));
    let md = std::fs::read_to_string(picked.join("eval.md")).unwrap();
    assert!(md.contains("classifier: trained on fashion-mnist"), "{md}");
    let mixed = dir.join("mixed");
    fails_with(
        &eval(Some("weights/classifier-mnist10k.safetensors"), &mixed),
        "trained on mnist10k, not on fashion-mnist",
    );
    assert!(!mixed.exists(), "no partial output");
    std::fs::remove_dir_all(dir).ok();
}

/// `trainer devices` lists the backends this build has; `--device cuda` on a machine without a
/// usable GPU (or a build without CUDA) is one clear error line, never a panic.
#[test]
fn devices_and_cuda_without_a_gpu() {
    let out = trainer(&["devices"]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("cpu: "), "{text}");
    assert!(text.contains("--device cpu"), "{text}");
    let out = trainer(&["devices", "--json"]);
    ok(&out);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let list = list.as_array().expect("a list");
    assert_eq!(list[0]["backend"], "cpu");
    let cuda = list.iter().find(|b| b["backend"] == "cuda");
    assert_eq!(cuda.is_some(), cfg!(feature = "cuda"), "{list:?}");
    if !cfg!(feature = "cuda") {
        assert!(text.contains("cuda: not compiled in"), "{text}");
    }

    let dir = tmp("cuda");
    let png = dir.join("x.png");
    let sample = |device: &str| {
        trainer(&[
            "sample",
            "--weights",
            &shipped(),
            "--num",
            "1",
            "--steps",
            "2",
            "--device",
            device,
            "--out",
            png.to_str().unwrap(),
        ])
    };
    fails_with(&sample("cuda:x"), "bad CUDA device index");
    match cuda {
        None => fails_with(&sample("cuda"), "this build has no CUDA backend"),
        Some(c) => match c["unavailable"].as_str() {
            // The reason `devices` gives is the error `--device cuda` gives.
            Some(why) => {
                fails_with(&sample("cuda"), why);
                assert!(c["devices"].as_array().unwrap().is_empty());
            }
            // A machine with a GPU: a device index past the last one is refused.
            None => fails_with(&sample("cuda:99"), "does not exist"),
        },
    }
    assert!(!png.exists(), "no output after a failure");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The shipped Fashion-MNIST model loads, names its classes, and samples a class by name.
#[test]
fn shipped_fashion_model_samples_a_class_by_name() {
    let weights =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../weights/fashion-mnist.safetensors");
    let dir = tmp("fashion");
    let png = dir.join("trouser.png");
    let npy = dir.join("trouser.npy");
    ok(&trainer(&[
        "sample",
        "--weights",
        weights.to_str().unwrap(),
        "--class",
        "trouser",
        "--num",
        "2",
        "--steps",
        "5",
        "--out",
        png.to_str().unwrap(),
        "--npy",
        npy.to_str().unwrap(),
    ]));
    assert!(png.is_file() && npy.is_file());
    fails_with(
        &trainer(&[
            "sample",
            "--weights",
            weights.to_str().unwrap(),
            "--class",
            "seven",
            "--out",
            png.to_str().unwrap(),
        ]),
        "seven",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The config a run wrote (`RUN/config.json`).
fn run_config(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap()
}

/// A class folder of `per_class` PNGs of `size`² per class (two classes), RGB or grey.
fn image_folder(dir: &Path, size: u32, rgb: bool, per_class: u32) {
    for (k, class) in ["circle", "square"].iter().enumerate() {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..per_class {
            let v = |x: u32, y: u32, c: u32| {
                ((x * 7 + y * 3 + c * 50 + i * 20 + k as u32 * 90) % 256) as u8
            };
            let path = dir.join(class).join(format!("{i}.png"));
            if rgb {
                image::RgbImage::from_fn(size, size, |x, y| {
                    image::Rgb([v(x, y, 0), v(x, y, 1), v(x, y, 2)])
                })
                .save(&path)
                .unwrap();
            } else {
                image::GrayImage::from_fn(size, size, |x, y| image::Luma([v(x, y, 0)]))
                    .save(&path)
                    .unwrap();
            }
        }
    }
}

/// With the default dataset and model flags, an image folder trains as it is: channels from
/// the images (RGB stays RGB), the size from the images, and the preset's attention moved to
/// the same level at that size. Only speed flags are set (2 steps, a small batch, 2 sampling
/// steps for the final grid).
#[test]
fn default_flags_fit_the_data() {
    let out = tmp("defaults");
    let quick = |batch: &'static str| {
        [
            "--steps",
            "2",
            "--batch-size",
            batch,
            "--sample-steps",
            "2",
            "--grid-cols",
            "1",
        ]
    };
    for (size, rgb, channels, attention, notes) in [
        (
            32,
            true,
            3,
            8,
            &[
                "3 channels",
                "the images are 32×32: training at 32×32",
                "attention at 8×8",
            ][..],
        ),
        (
            64,
            true,
            3,
            16,
            &["3 channels", "training at 64×64", "attention at 16×16"][..],
        ),
        (
            28,
            false,
            1,
            7,
            &["all grey: 1 channel", "training at 28×28"][..],
        ),
    ] {
        let data = out.join(format!("data-{size}-{rgb}"));
        image_folder(&data, size, rgb, 3);
        let run = out.join(format!("run-{size}-{rgb}"));
        let spec = format!("folder:{}", data.display());
        let mut args = vec!["train", "--dataset", &spec, "--out", run.to_str().unwrap()];
        args.extend(quick("4"));
        let err = ok(&trainer(&args));
        for n in notes {
            assert!(
                err.contains(&format!("note: ")) && err.contains(n),
                "`{n}` not in: {err}"
            );
        }
        let unet = &run_config(&run)["model"]["unet"];
        assert_eq!(unet["in_channels"], channels, "{size}");
        assert_eq!(unet["resolution"], size, "{size}");
        assert_eq!(
            unet["attention_resolutions"],
            serde_json::json!([attention]),
            "{size}"
        );
        assert!(run.join("ema.safetensors").is_file());
    }
    // Larger images train at 64 by default (resized down, never up); odd sizes round down to
    // what the three levels divide.
    for (size, rgb, note) in [
        (90, true, "the images are 90×90: training at 64×64"),
        (30, false, "the images are 30×30: training at 28×28"),
    ] {
        let data = out.join(format!("data-{size}"));
        image_folder(&data, size, rgb, 1);
        let run = out.join(format!("run-{size}"));
        let spec = format!("folder:{}", data.display());
        let mut args = vec!["train", "--dataset", &spec, "--out", run.to_str().unwrap()];
        args.extend(quick("2")); // one image per class
        let err = ok(&trainer(&args));
        assert!(err.contains(note), "{err}");
    }
    let run = out.join("run-mnist");
    // The fixed-size datasets keep refusing a size of their own.
    fails_with(
        &trainer(&[
            "train",
            "--dataset",
            "mnist10k",
            "--image-size",
            "64",
            "--out",
            run.to_str().unwrap(),
        ]),
        "--image-size 64 does not apply to mnist10k: its images are 1×28×28",
    );
}

/// SIGTERM mid-run: the steps in flight finish, a checkpoint is written, the exit status is
/// 143 and the message says where; `--resume` then ends with the same EMA weights, byte for
/// byte, as the run that was never interrupted.
#[test]
fn sigterm_saves_and_resume_is_exact() {
    sigterm_then_resume("sigterm", &[]);
}

/// The same with two data-parallel ranks on the CPU (`--devices cpu,cpu`, dropout on): the
/// checkpoint the signal writes holds rank 0's state, and the resumed run (on two ranks again)
/// ends with the uninterrupted run's bytes.
#[test]
fn data_parallel_sigterm_saves_and_resume_is_exact() {
    sigterm_then_resume("sigterm-dp", &["--devices", "cpu,cpu", "--dropout", "0.1"]);
}

fn sigterm_then_resume(name: &str, extra: &[&str]) {
    let out = tmp(name);
    let steps = "100";
    let args = |dir: &Path| -> Vec<String> {
        let mut a: Vec<String> = ["train", "--steps", steps, "--out", dir.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // TINY without its periodic checkpoints, and no grids: the checkpoint the signal
        // writes is the only way back.
        let tiny = TINY
            .join(" ")
            .replace("--checkpoint-every 2", "--checkpoint-every 0");
        a.extend(tiny.split(' ').map(String::from));
        a.extend(["--sample-every", "0"].map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let whole = out.join("whole");
    ok(&trainer(
        &args(&whole).iter().map(String::as_str).collect::<Vec<_>>(),
    ));

    let cut = out.join("cut");
    let child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args(&cut))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until a few steps are logged (metrics.jsonl: every 10th step), then signal.
    let metrics = cut.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |s| s.lines().count()) < 3 {
        assert!(t0.elapsed().as_secs() < 120, "the run never logged 3 lines");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    send_sigterm(child.id());
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(143), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let line = err.lines().last().unwrap();
    assert!(
        line.starts_with("error: stopped by SIGTERM at step "),
        "{err}"
    );
    let step: u64 = line["error: stopped by SIGTERM at step ".len()..]
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((20..100).contains(&step), "stopped at {step}: {err}");
    let ckpt = cut.join(format!("checkpoints/step-{step:08}"));
    assert!(line.contains(&format!("{}", ckpt.display())), "{line}");
    assert!(ckpt.join("state.json").is_file());
    assert!(
        !cut.join("ema.safetensors").exists(),
        "an interrupted run exports nothing"
    );
    // --resume continues in the checkpoint's run directory (no --out needed).
    let mut resume = vec!["train", "--resume", cut.to_str().unwrap()];
    // The device flags again (the others are the checkpoint's).
    resume.extend(extra.iter().take_while(|a| **a != "--dropout"));
    ok(&trainer(&resume));
    assert_eq!(
        std::fs::read(cut.join("ema.safetensors")).unwrap(),
        std::fs::read(whole.join("ema.safetensors")).unwrap(),
        "the resumed run's EMA differs from the uninterrupted one's"
    );
}

/// A diffusers pipeline folder written by diffusers 0.42.1 (crates/diffusers-format/tests/data)
/// through the CLI: import, sample from the reference's x_T with `--latents` (unconditional,
/// no `--class`) and match diffusers' 10 DDIM steps, export and import again byte for byte.
#[test]
fn diffusers_import_sample_from_latents_export_round_trip() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/diffusers-format/tests/data");
    let dir = tmp("diffusers");
    let w = dir.join("grey.safetensors");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let err = ok(&trainer(&[
        "import-diffusers",
        &s(&data.join("grey-two-levels")),
        "--out",
        &s(&w),
    ]));
    assert!(
        err.contains("unconditional") && err.contains("F16"),
        "{err}"
    );
    // The reference's x_T as .npy, and diffusers' result after 10 DDIM steps.
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("grey-two-levels.reference.json")).unwrap(),
    )
    .unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let shape: Vec<usize> = r["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let latents = dir.join("x_t.npy");
    artifacts::save_npy(&latents, &floats(&r["x_t"]), &shape).unwrap();
    let npy = dir.join("out.npy");
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "sample".to_string(),
            "--weights".into(),
            s(&w),
            "--latents".into(),
            s(&latents),
            "--sampler".into(),
            "ddim".into(),
            "--steps".into(),
            "10".into(),
            "--out".into(),
            s(&dir.join("out.png")),
            "--npy".into(),
            s(&npy),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        trainer(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    ok(&sample(&["--num", "2"]));
    let (ours, our_shape) = artifacts::parse_npy(&std::fs::read(&npy).unwrap()).unwrap();
    assert_eq!(our_shape, shape);
    let want = floats(&r["ddim"]);
    let d = ours
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        d * 127.5 <= 2.0,
        "the CLI's DDIM from the latents differs by {}/255",
        d * 127.5
    );
    // The latents must fit the request and the model.
    fails_with(
        &sample(&["--num", "3"]),
        "holds 2 images, but --class all --num 3 asks for 3",
    );
    artifacts::save_npy(&latents, &vec![0.0; 2 * 3 * 12 * 12], &[2, 3, 12, 12]).unwrap();
    fails_with(&sample(&["--num", "2"]), "this model needs [N, 1, 12, 12]");
    std::fs::write(&latents, b"not numpy").unwrap();
    fails_with(&sample(&["--num", "2"]), "not a .npy file");
    // Export as a pipeline folder, import it again: the same bytes.
    let pipe = dir.join("pipeline");
    ok(&trainer(&[
        "export",
        "--weights",
        &s(&w),
        "--format",
        "diffusers",
        "--out",
        &s(&pipe),
    ]));
    assert!(pipe.join("model_index.json").is_file());
    let w2 = dir.join("again.safetensors");
    ok(&trainer(&["import-diffusers", &s(&pipe), "--out", &s(&w2)]));
    assert_eq!(std::fs::read(&w2).unwrap(), std::fs::read(&w).unwrap());
    assert_eq!(
        std::fs::read(dir.join("again.json")).unwrap(),
        std::fs::read(dir.join("grey.json")).unwrap()
    );
    // The browser tests' imported RGB golden (tests/make-golden.sh) is what a fresh import and
    // sample give, byte for byte.
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/imported");
    let gw = dir.join("google.safetensors");
    ok(&trainer(&[
        "import-diffusers",
        &s(&data.join("google-style")),
        "--f16",
        "--out",
        &s(&gw),
    ]));
    assert_eq!(
        std::fs::read(&gw).unwrap(),
        std::fs::read(golden.join("google-style.safetensors")).unwrap()
    );
    let gnpy = dir.join("google.npy");
    ok(&trainer(&[
        "sample",
        "--weights",
        &s(&gw),
        "--num",
        "4",
        "--sampler",
        "ddim",
        "--steps",
        "10",
        "--seed",
        "3",
        "--out",
        &s(&dir.join("g.png")),
        "--npy",
        &s(&gnpy),
    ]));
    assert_eq!(
        std::fs::read(&gnpy).unwrap(),
        std::fs::read(golden.join("google-style-ddim-s3-n4.npy")).unwrap()
    );
    // Bad input: a folder that is not diffusers', a file name for a folder export.
    fails_with(
        &trainer(&["import-diffusers", &s(&dir), "--out", &s(&w2)]),
        "neither a pipeline folder",
    );
    fails_with(
        &trainer(&[
            "export",
            "--weights",
            &s(&w),
            "--format",
            "diffusers",
            "--out",
            &s(&w2),
        ]),
        "writes a folder",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--init-weights`: the run starts from the given weights (its EMA too), so at a vanishing
/// learning rate the exported EMA samples what the initial weights sample; the model comes
/// from the weights' config, so architecture flags are errors.
#[test]
fn train_init_weights_fine_tunes_from_the_given_weights() {
    let w = run().join("ema.safetensors");
    let out = tmp("init");
    let tuned = out.join("tuned");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(&trainer(&[
        "train",
        "--init-weights",
        &s(&w),
        "--steps",
        "1",
        "--lr",
        "1e-12",
        "--warmup-steps",
        "0",
        "--batch-size",
        "4",
        "--limit",
        "16",
        "--sample-every",
        "100",
        "--checkpoint-every",
        "1",
        "--out",
        &s(&tuned),
    ]));
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tuned.join("checkpoints/step-00000001/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["config"]["init_weights"], s(&w));
    let sample = |weights: &Path, npy: &Path| {
        ok(&trainer(&[
            "sample",
            "--weights",
            &s(weights),
            "--class",
            "3",
            "--num",
            "2",
            "--steps",
            "3",
            "--out",
            &s(&out.join("s.png")),
            "--npy",
            &s(npy),
        ]))
    };
    let (a, b) = (out.join("a.npy"), out.join("b.npy"));
    sample(&w, &a);
    sample(&tuned.join("ema.safetensors"), &b);
    let read = |p: &Path| artifacts::parse_npy(&std::fs::read(p).unwrap()).unwrap().0;
    let (a, b) = (read(&a), read(&b));
    let d = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        d < 1e-3,
        "fine-tuned at lr 1e-12, the EMA samples differ by {d}"
    );
    assert!(
        a.iter().any(|v| v.abs() > 0.05),
        "the samples are not trivially zero"
    );
    fails_with(
        &trainer(&[
            "train",
            "--init-weights",
            &s(&w),
            "--base-channels",
            "64",
            "--out",
            &s(&tuned),
        ]),
        "--base-channels does not apply with --init-weights",
    );
    fails_with(
        &trainer(&[
            "train",
            "--init-weights",
            &s(&out.join("none.safetensors")),
            "--out",
            &s(&tuned),
        ]),
        "no such file",
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// SDEdit from the CLI: `--init-image` at the model's size (or `--resize`d), `--strength`;
/// a wrong size or strength is one error line.
#[test]
fn sample_from_an_init_image() {
    let w = run().join("ema.safetensors");
    let out = tmp("sdedit");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let png = |side: usize, name: &str| {
        let values: Vec<f32> = (0..side * side)
            .map(|i| if (i / side) % 7 < 3 { 1.0 } else { -1.0 })
            .collect();
        let p = out.join(name);
        artifacts::save_png(&p, &artifacts::grid(&values, [1, 1, side, side], 1, 0, 1)).unwrap();
        p
    };
    let (right, small) = (png(28, "right.png"), png(20, "small.png"));
    let sample = |img: &Path, extra: &[&str]| {
        let mut args = vec![
            "sample".to_string(),
            "--weights".into(),
            s(&w),
            "--init-image".into(),
            s(img),
            "--class".into(),
            "3".into(),
            "--num".into(),
            "2".into(),
            "--steps".into(),
            "10".into(),
            "--out".into(),
            s(&out.join("o.png")),
            "--npy".into(),
            s(&out.join("o.npy")),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        trainer(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    ok(&sample(&right, &["--strength", "0.5"]));
    fails_with(
        &sample(&small, &["--strength", "0.5"]),
        "the image is 20×20; the model takes 28×28",
    );
    ok(&sample(&small, &["--strength", "0.5", "--resize"]));
    fails_with(
        &sample(&right, &["--strength", "1.5"]),
        "strength = 1.5 must lie in (0, 1]",
    );
    fails_with(
        &sample(&right, &["--strength", "0.05"]),
        "leaves no step to take",
    );
    std::fs::write(out.join("bad.png"), b"no image").unwrap();
    fails_with(&sample(&out.join("bad.png"), &[]), "not a readable image");
    // Inpainting: white = regenerate; the kept pixels come back exactly.
    let mask_values: Vec<f32> = (0..28 * 28)
        .map(|i| if i >= 14 * 28 { 1.0 } else { -1.0 })
        .collect();
    let mask = out.join("mask.png");
    artifacts::save_png(
        &mask,
        &artifacts::grid(&mask_values, [1, 1, 28, 28], 1, 0, 1),
    )
    .unwrap();
    let m = s(&mask);
    ok(&sample(
        &right,
        &["--mask", &m, "--jump-length", "2", "--jump-n-sample", "2"],
    ));
    let (got, shape) = artifacts::parse_npy(&std::fs::read(out.join("o.npy")).unwrap()).unwrap();
    assert_eq!(shape, vec![2, 1, 28, 28]);
    let image = artifacts::load_image_values(&right, 1, 28, false).unwrap();
    for k in 0..2 {
        for i in 0..14 * 28 {
            assert_eq!(got[k * 784 + i], image[i], "kept pixel {i} of image {k}");
        }
    }
    fails_with(
        &sample(&right, &["--mask", &s(&small)]),
        "the image is 20×20",
    );
    fails_with(
        &sample(&right, &["--mask", &m, "--sampler", "ddim"]),
        "--sampler does not apply with --mask",
    );
    std::fs::remove_dir_all(&out).unwrap();
}
