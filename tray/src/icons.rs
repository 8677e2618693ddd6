//! The four state icons, compiled in from `assets/png/` (rendered from `assets/*.svg` by
//! `assets/render.sh`).

use crate::model::IconKind;

/// Size of the pixmap handed to the tray host (pixels); hosts scale it to their panel.
/// tray-icon passes one pixmap per icon, so the largest sharp one is used.
#[cfg(test)]
const TRAY_ICON_SIZE: u32 = 64;

const OFF: &[u8] = include_bytes!("../../assets/png/off-64.png");
const BOOTSTRAPPING: &[u8] = include_bytes!("../../assets/png/bootstrapping-64.png");
const ON: &[u8] = include_bytes!("../../assets/png/on-64.png");
const ERROR: &[u8] = include_bytes!("../../assets/png/error-64.png");

/// The PNG of `kind` at [`TRAY_ICON_SIZE`].
pub fn png(kind: IconKind) -> &'static [u8] {
    match kind {
        IconKind::Off => OFF,
        IconKind::Bootstrapping => BOOTSTRAPPING,
        IconKind::On => ON,
        IconKind::Error => ERROR,
    }
}

/// A PNG decoded to 8-bit RGBA: `(pixels, width, height)`.
///
/// # Errors
/// A message when the bytes are not a PNG that decodes to 8-bit RGBA.
pub fn decode_rgba(bytes: &[u8]) -> Result<(Vec<u8>, u32, u32), String> {
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
    Ok((buf, info.width, info.height))
}

/// The tray icon of `kind`.
///
/// # Errors
/// A message if the compiled-in PNG does not decode (a broken asset; the unit tests catch
/// it first).
pub fn tray_icon(kind: IconKind) -> Result<tray_icon::Icon, String> {
    let (rgba, w, h) = decode_rgba(png(kind))?;
    tray_icon::Icon::from_rgba(rgba, w, h).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_decodes_at_its_size_and_the_states_look_different() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/png");
        for state in ["off", "bootstrapping", "on", "error"] {
            for size in [16, 22, 24, 32, 48, 64] {
                let path = dir.join(format!("{state}-{size}.png"));
                let bytes = std::fs::read(&path).unwrap();
                let (rgba, w, h) = decode_rgba(&bytes).unwrap();
                assert_eq!((w, h), (size, size), "{}", path.display());
                assert_eq!(rgba.len(), (size * size * 4) as usize);
                let opaque = rgba.chunks(4).filter(|p| p[3] > 200).count();
                assert!(
                    opaque > (size * size / 2) as usize,
                    "{} is mostly transparent",
                    path.display()
                );
            }
        }
        let kinds = [
            IconKind::Off,
            IconKind::Bootstrapping,
            IconKind::On,
            IconKind::Error,
        ];
        let pixels: Vec<Vec<u8>> = kinds
            .iter()
            .map(|k| decode_rgba(png(*k)).unwrap().0)
            .collect();
        for i in 0..pixels.len() {
            for j in i + 1..pixels.len() {
                assert_ne!(pixels[i], pixels[j], "{:?} = {:?}", kinds[i], kinds[j]);
            }
        }
        for k in kinds {
            assert_eq!(decode_rgba(png(k)).unwrap().1, TRAY_ICON_SIZE);
            tray_icon(k).unwrap();
        }
    }

    #[test]
    fn a_broken_png_is_an_error_not_a_panic() {
        assert!(decode_rgba(b"not a png").is_err());
        assert!(decode_rgba(&ON[..ON.len() / 2]).is_err());
    }
}
