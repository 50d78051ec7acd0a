//! QR codes of a text (a link's short URL) as SVG or PNG images.
//!
//! # Size
//! An image is `size`×`size` pixels exactly. Each module (one square of the code) is a whole
//! number of pixels, `size / (modules + 8)` rounded down (modules across the code, plus a quiet
//! zone of 4 modules each side, which the standard asks for); what is left over is added to the
//! quiet zone, half each side, so the code stays centred and crisp. Only when `size` is smaller
//! than the code plus its quiet zone at one pixel a module (a long text in a small image) is the
//! image larger than asked: `modules + 8` pixels square, the smallest that can be read.
//!
//! # Formats
//! SVG is drawn by the `qrcode` crate's SVG renderer at the module size above and placed in an
//! outer `<svg>` of the requested size. PNG is drawn here from the code's modules and encoded by
//! the `png` crate as a 1-bit greyscale image (a 2048×2048 image is about 512 KiB before
//! compression, and a few KiB after).
//!
//! Error correction is level M (15 % of the code can be lost): what phone cameras read well,
//! and a short URL fits in a small version at it.

use qrcode::{render::svg, Color, EcLevel, QrCode};

/// An image format of a QR code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QrFormat {
    /// `image/svg+xml`.
    Svg,
    /// `image/png`.
    Png,
}

impl QrFormat {
    /// `svg` or `png` (ASCII case-insensitive); `None` for anything else.
    pub fn parse(s: &str) -> Option<QrFormat> {
        if s.eq_ignore_ascii_case("svg") {
            Some(QrFormat::Svg)
        } else if s.eq_ignore_ascii_case("png") {
            Some(QrFormat::Png)
        } else {
            None
        }
    }

    /// The media type of an image in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            QrFormat::Svg => "image/svg+xml",
            QrFormat::Png => "image/png",
        }
    }

    /// The file name extension of this format, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            QrFormat::Svg => "svg",
            QrFormat::Png => "png",
        }
    }
}

/// The smallest image side, in pixels.
pub const MIN_SIZE: u32 = 64;
/// The largest image side, in pixels.
pub const MAX_SIZE: u32 = 2048;
/// The image side when none is asked for, in pixels.
pub const DEFAULT_SIZE: u32 = 256;

/// Modules of quiet zone on each side (what ISO/IEC 18004 asks for).
const QUIET_ZONE: u32 = 4;

/// Why no image was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QrError {
    /// `size` is outside [`MIN_SIZE`]..=[`MAX_SIZE`].
    Size,
    /// The text does not fit in the largest QR code.
    TooLong,
}

impl std::fmt::Display for QrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QrError::Size => write!(f, "size must be between {MIN_SIZE} and {MAX_SIZE} pixels"),
            QrError::TooLong => write!(f, "the text is too long for a QR code"),
        }
    }
}

impl std::error::Error for QrError {}

/// The geometry of one image: the side in pixels, pixels a module, and the offset of the
/// code's first module from the image's edge.
struct Layout {
    side: u32,
    module: u32,
    offset: u32,
}

impl Layout {
    fn new(modules: u32, size: u32) -> Layout {
        let across = modules + 2 * QUIET_ZONE;
        let module = (size / across).max(1);
        let side = size.max(across);
        Layout { side, module, offset: (side - modules * module) / 2 }
    }
}

/// The QR code of `text` as an image of `format`, `size` pixels square (see the module doc for
/// how a size that is not a whole number of pixels a module is met).
pub fn render(text: &str, format: QrFormat, size: u32) -> Result<Vec<u8>, QrError> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(QrError::Size);
    }
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).map_err(|_| QrError::TooLong)?;
    let modules = u32::try_from(code.width()).expect("a QR code is at most 177 modules across");
    let layout = Layout::new(modules, size);
    Ok(match format {
        QrFormat::Svg => render_svg(&code, &layout).into_bytes(),
        QrFormat::Png => render_png(&code, modules, &layout),
    })
}

fn render_svg(code: &QrCode, l: &Layout) -> String {
    let inner = code
        .render::<svg::Color<'_>>()
        .quiet_zone(false)
        .module_dimensions(l.module, l.module)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build();
    // The renderer writes a whole document; its root element goes inside ours, which has the
    // asked size, the white quiet zone, and places the code at its offset.
    let inner = inner.find("<svg").map_or(inner.as_str(), |at| &inner[at..]);
    let inner = inner.replacen("<svg ", &format!(r#"<svg x="{o}" y="{o}" "#, o = l.offset), 1);
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{s}" height="{s}""#,
            r#" viewBox="0 0 {s} {s}" shape-rendering="crispEdges">"#,
            r##"<rect x="0" y="0" width="{s}" height="{s}" fill="#ffffff"/>{inner}</svg>"##,
        ),
        s = l.side,
        inner = inner
    )
}

fn render_png(code: &QrCode, modules: u32, l: &Layout) -> Vec<u8> {
    let colors = code.to_colors();
    let row_bytes = l.side.div_ceil(8) as usize;
    // 1-bit greyscale: 1 is white, 0 black; start all white (the quiet zone).
    let mut pixels = vec![0xffu8; row_bytes * l.side as usize];
    let code_side = modules * l.module;
    for y in 0..code_side {
        let row = &mut pixels[(l.offset + y) as usize * row_bytes..][..row_bytes];
        let my = y / l.module;
        for x in 0..code_side {
            if colors[(my * modules + x / l.module) as usize] == Color::Dark {
                let px = (l.offset + x) as usize;
                row[px / 8] &= !(0x80 >> (px % 8));
            }
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, l.side, l.side);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    let mut writer = encoder.write_header().expect("writing a PNG header to memory cannot fail");
    writer.write_image_data(&pixels).expect("the buffer matches the header's dimensions");
    writer.finish().expect("finishing a PNG in memory cannot fail");
    out
}

#[cfg(test)]
#[path = "../tests/support/qr_decode.rs"]
mod qr_decode;

#[cfg(test)]
mod tests {
    use super::{qr_decode, *};

    const URL: &str = "https://sho.rt/Ab3_x-9";

    #[test]
    fn formats_parse_case_insensitively_and_name_their_media_type() {
        assert_eq!(QrFormat::parse("svg"), Some(QrFormat::Svg));
        assert_eq!(QrFormat::parse("PNG"), Some(QrFormat::Png));
        assert_eq!(QrFormat::parse("jpeg"), None);
        assert_eq!(QrFormat::parse(""), None);
        assert_eq!(QrFormat::Svg.content_type(), "image/svg+xml");
        assert_eq!(QrFormat::Png.content_type(), "image/png");
        assert_eq!(QrFormat::Png.extension(), "png");
        assert_eq!(QrFormat::Svg.extension(), "svg");
    }

    #[test]
    fn sizes_outside_the_range_are_refused() {
        for size in [0, MIN_SIZE - 1, MAX_SIZE + 1, u32::MAX] {
            assert_eq!(render(URL, QrFormat::Png, size), Err(QrError::Size), "{size}");
            assert_eq!(render(URL, QrFormat::Svg, size), Err(QrError::Size), "{size}");
        }
        assert!(QrError::Size.to_string().contains("64 and 2048"));
    }

    #[test]
    fn a_text_longer_than_the_largest_code_holds_is_too_long() {
        // Version 40 at level M holds 2,331 bytes.
        let long = "a".repeat(2_332);
        assert_eq!(render(&long, QrFormat::Svg, DEFAULT_SIZE), Err(QrError::TooLong));
        assert!(render(&"a".repeat(2_331), QrFormat::Png, MAX_SIZE).is_ok());
    }

    #[test]
    fn a_png_is_exactly_the_asked_size_and_decodes_to_the_text() {
        for size in [MIN_SIZE, 100, DEFAULT_SIZE, 257, 1000, MAX_SIZE] {
            let png = render(URL, QrFormat::Png, size).unwrap();
            let (w, h) = qr_decode::png_dimensions(&png);
            assert_eq!((w, h), (size, size));
            assert_eq!(qr_decode::decode_png(&png), URL, "size {size}");
        }
    }

    #[test]
    fn an_svg_is_exactly_the_asked_size_and_decodes_to_the_text() {
        for size in [MIN_SIZE, 100, DEFAULT_SIZE, 1000] {
            let svg = render(URL, QrFormat::Svg, size).unwrap();
            let text = std::str::from_utf8(&svg).unwrap();
            assert!(text.contains(&format!(r#"width="{size}" height="{size}""#)), "{text}");
            assert_eq!(qr_decode::decode_svg(&svg), URL, "size {size}");
        }
    }

    #[test]
    fn a_long_text_in_a_small_image_gets_the_smallest_readable_image() {
        let text = format!("https://example.com/?q={}", "x".repeat(1_000 - 23));
        let modules = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).unwrap().width() as u32;
        assert!(modules + 2 * QUIET_ZONE > MIN_SIZE, "{modules}");
        let png = render(&text, QrFormat::Png, MIN_SIZE).unwrap();
        let (w, h) = qr_decode::png_dimensions(&png);
        assert_eq!((w, h), (modules + 2 * QUIET_ZONE, modules + 2 * QUIET_ZONE));
        assert_eq!(qr_decode::decode_png(&png), text);
    }

    #[test]
    fn the_quiet_zone_is_at_least_four_modules_and_the_code_is_centred() {
        for (modules, size) in [(21, 64), (25, 256), (29, 257), (177, 2048), (105, 64)] {
            let l = Layout::new(modules, size);
            assert!(l.offset >= QUIET_ZONE * l.module, "{modules} {size}");
            let right = l.side - l.offset - modules * l.module;
            assert!(right >= QUIET_ZONE * l.module && right.abs_diff(l.offset) <= 1, "{modules} {size}");
        }
    }

    #[test]
    fn unicode_and_punctuation_survive_the_round_trip() {
        let text = "https://example.com/ä?q=\"a,b\"&x=✓";
        assert_eq!(qr_decode::decode_png(&render(text, QrFormat::Png, 300).unwrap()), text);
        assert_eq!(qr_decode::decode_svg(&render(text, QrFormat::Svg, 300).unwrap()), text);
    }
}
