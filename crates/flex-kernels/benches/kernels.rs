//! Each kernel on its own against Burn's op at the `mnist` U-Net's sizes (batch 32), forward
//! and forward + backward: `cargo bench -p flex-kernels [-- FILTER]`.
//!
//! Every case runs the same closure twice, once on the kernels and once inside
//! [`with_burn_ops`], interleaved over the repetitions so that the machine's drift hits both
//! alike, and prints both medians and their ratio.

use std::time::Instant;

use burn::nn::conv::Conv2dConfig;
use burn::nn::{GroupNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Distribution, Tensor};
use flex_kernels::with_burn_ops;

/// Repetitions per path after one warm-up each.
const REPS: usize = 9;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `f` on the kernels and on Burn's ops, alternating, and prints the medians.
fn case(filter: &Option<String>, name: &str, mut f: impl FnMut()) {
    if filter.as_ref().is_some_and(|p| !name.contains(p.as_str())) {
        return;
    }
    f();
    with_burn_ops(&mut f);
    let (mut ours, mut burn) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        let t = Instant::now();
        f();
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        with_burn_ops(&mut f);
        burn.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (ours, burn) = (median(ours), median(burn));
    println!(
        "{name:<40} kernels {ours:>9.2} ms   Burn {burn:>9.2} ms   {:>5.2}× Burn's time",
        ours / burn
    );
}

/// Forward alone, or forward + backward with the gradient of every input.
fn run<const D: usize, const E: usize>(
    device: &Device,
    inputs: &[Tensor<D>],
    op: impl Fn(&[Tensor<D>]) -> Tensor<E>,
) {
    let inputs: Vec<Tensor<D>> = match device.is_autodiff() {
        true => inputs.iter().map(|t| t.clone().require_grad()).collect(),
        false => inputs.to_vec(),
    };
    let y = op(&inputs);
    if !device.is_autodiff() {
        let _ = y.sum().into_scalar::<f32>();
        return;
    }
    let grads = y.sum().backward();
    for t in &inputs {
        let _ = t.grad(&grads).expect("gradient").sum().into_scalar::<f32>();
    }
}

fn main() {
    // As the trainer and `bench` do: without it glibc maps and unmaps every output buffer, and
    // page faults dominate the small kernels.
    flex_kernels::allocator::retain_freed_memory();
    // `cargo bench` passes `--bench`; anything else is a name filter.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let plain = Device::flex();
    for (pass, device) in [("forward", plain.clone()), ("fwd+bwd", plain.autodiff())] {
        let random =
            |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        // The `mnist` U-Net's 3×3 convolutions: each level's ResBlock conv, and the widest
        // up-path input.
        for (ci, co, side) in [(32, 32, 28), (64, 64, 14), (64, 64, 7), (96, 32, 28)] {
            let conv = Conv2dConfig::new([ci, co], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(&device);
            let x = random([32, ci, side, side]);
            case(
                &filter,
                &format!("conv2d 3×3 {ci}→{co} {side}² {pass}"),
                || {
                    run(&device, &[x.clone()], |t| {
                        flex_kernels::conv2d(&conv, t[0].clone())
                    })
                },
            );
        }
        for (c, side) in [(32, 28), (64, 14)] {
            let norm = GroupNormConfig::new(32, c).with_epsilon(1e-6).init(&device);
            let x = random([32, c, side, side]);
            case(
                &filter,
                &format!("group_norm_silu {c}×{side}² {pass}"),
                || {
                    run(&device, &[x.clone()], |t| {
                        flex_kernels::group_norm_silu(&norm, t[0].clone())
                    })
                },
            );
            let (s, t) = (random([32, c, 1, 1]), random([32, c, 1, 1]));
            case(&filter, &format!("film_silu {c}×{side}² {pass}"), || {
                run(&device, &[x.clone(), s.clone(), t.clone()], |v| {
                    flex_kernels::film_silu(v[0].clone(), v[1].clone(), v[2].clone())
                })
            });
            let y = random([32, c, side, side]);
            case(&filter, &format!("add {c}×{side}² {pass}"), || {
                run(&device, &[x.clone(), y.clone()], |v| {
                    flex_kernels::add(v[0].clone(), v[1].clone())
                })
            });
            case(
                &filter,
                &format!("cat_channels {c}+{c}×{side}² {pass}"),
                || {
                    run(&device, &[x.clone(), y.clone()], |v| {
                        flex_kernels::cat_channels(v[0].clone(), v[1].clone())
                    })
                },
            );
        }
        let qkv = random([32, 3 * 64, 7, 7]);
        case(
            &filter,
            &format!("self_attention 64 ch 7² 1 head {pass}"),
            || {
                run(&device, &[qkv.clone()], |t| {
                    flex_kernels::self_attention(t[0].clone(), 1)
                })
            },
        );
    }
}
