//! Which classes a batch of samples shows, and how a grid lays them out: one rule for
//! `trainer sample --class/--num`, the training grids and the browser page, so the same
//! settings give the same grid everywhere.

use crate::error::{Error, Result};

/// The classes of a sampled batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassChoice {
    /// One row per class (`all`).
    All,
    /// Unconditional samples (`none`).
    Unconditional,
    /// Every image of class k.
    Class(usize),
}

/// The label of every image in a batch and the grid's column count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridLabels {
    /// One entry per image, row by row: `Some(k)` = class k, `None` = unconditional.
    pub labels: Vec<Option<usize>>,
    /// Columns of the grid the batch is drawn in.
    pub cols: usize,
}

/// At most this many columns for a single-class or unconditional grid.
pub const MAX_GRID_COLS: usize = 8;

/// Labels for a grid with one row per class and `cols` columns.
pub fn class_rows(num_classes: usize, cols: usize) -> Vec<Option<usize>> {
    (0..num_classes)
        .flat_map(|k| std::iter::repeat_n(Some(k), cols))
        .collect()
}

impl ClassChoice {
    /// Parses `all`, `none` or a class index.
    pub fn parse(s: &str) -> Result<Self> {
        Self::parse_named(s, None)
    }

    /// Parses `all`, `none`, a class index or, when the model names its classes
    /// (`ModelConfig::class_names`), a class name (ASCII case-insensitive).
    pub fn parse_named(s: &str, class_names: Option<&[String]>) -> Result<Self> {
        match s {
            "all" => return Ok(Self::All),
            "none" => return Ok(Self::Unconditional),
            _ => {}
        }
        if let Ok(k) = s.parse() {
            return Ok(Self::Class(k));
        }
        let names = class_names.unwrap_or_default();
        match names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            Some(k) => Ok(Self::Class(k)),
            None if names.is_empty() => Err(Error::Sampler(format!(
                "class must be a class index, `none` or `all`, not `{s}`"
            ))),
            None => Err(Error::Sampler(format!(
                "class must be a class index, a class name ({}), `none` or `all`, not `{s}`",
                names.join(", ")
            ))),
        }
    }

    /// The labels for `num` images (per class for [`ClassChoice::All`]) of a model with
    /// `num_classes` classes (`None`: unconditional), and the grid's columns: `num` for one
    /// row per class, else at most [`MAX_GRID_COLS`]. `all` on an unconditional model gives
    /// `num` unconditional images.
    pub fn grid(self, num: usize, num_classes: Option<usize>) -> Result<GridLabels> {
        if num == 0 {
            return Err(Error::Sampler(
                "the number of images must be at least 1".into(),
            ));
        }
        let single = |label| GridLabels {
            labels: vec![label; num],
            cols: num.min(MAX_GRID_COLS),
        };
        match (self, num_classes) {
            (Self::All, Some(n)) => Ok(GridLabels {
                labels: class_rows(n, num),
                cols: num,
            }),
            (Self::All | Self::Unconditional, _) => Ok(single(None)),
            (Self::Class(k), Some(n)) if k < n => Ok(single(Some(k))),
            (Self::Class(k), Some(n)) => Err(Error::Sampler(format!(
                "class {k} is out of range: the model has classes 0..={}",
                n - 1
            ))),
            (Self::Class(k), None) => Err(Error::Sampler(format!(
                "class {k}: the model is unconditional (use `none`)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_lays_out_grids() {
        assert_eq!(ClassChoice::parse("all").unwrap(), ClassChoice::All);
        assert_eq!(
            ClassChoice::parse("none").unwrap(),
            ClassChoice::Unconditional
        );
        assert_eq!(ClassChoice::parse("7").unwrap(), ClassChoice::Class(7));
        let names: Vec<String> = ["T-shirt/top", "Trouser", "Bag"].map(String::from).into();
        let named = |s| ClassChoice::parse_named(s, Some(&names));
        assert_eq!(named("trouser").unwrap(), ClassChoice::Class(1));
        assert_eq!(named("2").unwrap(), ClassChoice::Class(2));
        assert_eq!(named("all").unwrap(), ClassChoice::All);
        let e = named("Sandal").unwrap_err().to_string();
        assert!(
            e.contains("T-shirt/top, Trouser, Bag") && e.contains("`Sandal`"),
            "{e}"
        );
        let e = ClassChoice::parse("seven").unwrap_err().to_string();
        assert!(e.contains("`seven`"), "{e}");

        let g = ClassChoice::All.grid(2, Some(3)).unwrap();
        assert_eq!(
            g.labels,
            [Some(0), Some(0), Some(1), Some(1), Some(2), Some(2)]
        );
        assert_eq!(g.cols, 2);
        let g = ClassChoice::Class(4).grid(16, Some(10)).unwrap();
        assert_eq!((g.labels.len(), g.cols), (16, 8));
        assert!(g.labels.iter().all(|l| *l == Some(4)));
        let g = ClassChoice::Unconditional.grid(3, Some(10)).unwrap();
        assert_eq!((g.labels, g.cols), (vec![None; 3], 3));
        assert_eq!(
            ClassChoice::All.grid(5, None).unwrap().labels,
            vec![None; 5]
        );
    }

    #[test]
    fn rejects_what_the_model_cannot_sample() {
        let msg = |r: Result<GridLabels>| r.unwrap_err().to_string();
        assert!(msg(ClassChoice::Class(10).grid(1, Some(10))).contains("0..=9"));
        assert!(msg(ClassChoice::Class(0).grid(1, None)).contains("unconditional"));
        assert!(msg(ClassChoice::All.grid(0, Some(10))).contains("at least 1"));
    }
}
