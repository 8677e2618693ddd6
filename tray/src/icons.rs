//! The four state icons at six sizes, compiled in from `assets/png/` (rendered from
//! `assets/*.svg` by `assets/render.sh`).

use crate::model::IconKind;

/// The sizes compiled in (pixels, square). A StatusNotifierItem hands the host all of
/// them (`IconPixmap` is a list), so it can pick the one that fits its panel instead of
/// scaling one; the Windows notification area gets [`LARGEST`].
pub const SIZES: [u32; 6] = [16, 22, 24, 32, 48, 64];

/// The largest size, for a backend that takes one pixmap (pixels).
#[cfg_attr(not(test), allow(dead_code))]
pub const LARGEST: u32 = 64;

/// `include_bytes!` of `assets/png/STATE-SIZE.png` for every size in [`SIZES`] order.
macro_rules! sizes {
    ($state:literal) => {
        [
            include_bytes!(concat!("../../assets/png/", $state, "-16.png")).as_slice(),
            include_bytes!(concat!("../../assets/png/", $state, "-22.png")).as_slice(),
            include_bytes!(concat!("../../assets/png/", $state, "-24.png")).as_slice(),
            include_bytes!(concat!("../../assets/png/", $state, "-32.png")).as_slice(),
            include_bytes!(concat!("../../assets/png/", $state, "-48.png")).as_slice(),
            include_bytes!(concat!("../../assets/png/", $state, "-64.png")).as_slice(),
        ]
    };
}

const OFF: [&[u8]; 6] = sizes!("off");
const BOOTSTRAPPING: [&[u8]; 6] = sizes!("bootstrapping");
const ON: [&[u8]; 6] = sizes!("on");
const ERROR: [&[u8]; 6] = sizes!("error");

/// The PNGs of `kind`, one per entry of [`SIZES`], in that order.
pub fn pngs(kind: IconKind) -> [&'static [u8]; 6] {
    match kind {
        IconKind::Off => OFF,
        IconKind::Bootstrapping => BOOTSTRAPPING,
        IconKind::On => ON,
        IconKind::Error => ERROR,
    }
}

/// An icon decoded to 8-bit RGBA, row by row from the top left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgba {
    /// `width × height × 4` bytes: R, G, B, A.
    pub pixels: Vec<u8>,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
}

/// A PNG decoded to 8-bit RGBA.
///
/// # Errors
/// A message when the bytes are not a PNG that decodes to 8-bit RGBA.
pub fn decode_rgba(bytes: &[u8]) -> Result<Rgba, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "image too large".to_owned())?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    if info.color_type != png::ColorType::Rgba || info.bit_depth != png::BitDepth::Eight {
        return Err(format!(
            "{:?} {:?}, expected 8-bit RGBA",
            info.color_type, info.bit_depth
        ));
    }
    buf.truncate(info.buffer_size());
    Ok(Rgba {
        pixels: buf,
        width: info.width,
        height: info.height,
    })
}

/// Every size of `kind`, decoded, smallest first.
///
/// # Errors
/// A message if a compiled-in PNG does not decode (a broken asset; the unit tests catch it
/// first).
#[cfg_attr(windows, allow(dead_code))]
pub fn all_sizes(kind: IconKind) -> Result<Vec<Rgba>, String> {
    pngs(kind).iter().map(|png| decode_rgba(png)).collect()
}

/// The [`LARGEST`] size of `kind`, decoded.
///
/// # Errors
/// As [`all_sizes`].
#[cfg_attr(not(windows), allow(dead_code))]
pub fn largest(kind: IconKind) -> Result<Rgba, String> {
    decode_rgba(pngs(kind)[SIZES.len() - 1])
}

/// `rgba` as the StatusNotifierItem's `IconPixmap` wants it: ARGB32 in network byte
/// order (A, R, G, B per pixel).
#[cfg_attr(windows, allow(dead_code))]
pub fn to_argb32(rgba: &[u8]) -> Vec<u8> {
    rgba.chunks_exact(4)
        .flat_map(|p| [p[3], p[0], p[1], p[2]])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [IconKind; 4] = [
        IconKind::Off,
        IconKind::Bootstrapping,
        IconKind::On,
        IconKind::Error,
    ];

    #[test]
    fn every_compiled_in_icon_decodes_at_its_size_and_the_states_look_different() {
        for kind in KINDS {
            let icons = all_sizes(kind).unwrap();
            assert_eq!(icons.len(), SIZES.len());
            for (icon, size) in icons.iter().zip(SIZES) {
                assert_eq!((icon.width, icon.height), (size, size), "{kind:?}");
                assert_eq!(icon.pixels.len(), (size * size * 4) as usize);
                let opaque = icon.pixels.chunks(4).filter(|p| p[3] > 200).count();
                assert!(
                    opaque > (size * size / 2) as usize,
                    "{kind:?} at {size} px is mostly transparent"
                );
            }
            assert_eq!(largest(kind).unwrap().width, LARGEST);
        }
        for (i, a) in KINDS.iter().enumerate() {
            for b in &KINDS[i + 1..] {
                for (pa, pb) in pngs(*a).iter().zip(pngs(*b)) {
                    assert_ne!(*pa, pb, "{a:?} = {b:?}");
                }
            }
        }
    }

    #[test]
    fn argb32_moves_alpha_first() {
        assert_eq!(
            to_argb32(&[1, 2, 3, 4, 5, 6, 7, 8]),
            vec![4, 1, 2, 3, 8, 5, 6, 7]
        );
    }

    #[test]
    fn a_broken_png_is_an_error_not_a_panic() {
        let on = pngs(IconKind::On)[5];
        assert!(decode_rgba(b"not a png").is_err());
        assert!(decode_rgba(&on[..on.len() / 2]).is_err());
    }
}
