//! Reading QR code images back, for tests: PNG through the `png` decoder, SVG rasterized by
//! `resvg`, then the modules found and decoded by `rqrr` (a decoder that knows nothing of how
//! the image was made). Shared by `src/qr.rs`'s unit tests and the integration tests.

#![allow(dead_code)]

/// Decodes the one QR code in a greyscale picture `w`×`h` (`luma(x, y)`: 0 black, 255 white).
fn decode_luma(w: usize, h: usize, luma: impl FnMut(usize, usize) -> u8) -> String {
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, luma);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "expected exactly one QR code in the image");
    let (_, text) = grids[0].decode().expect("the QR code decodes");
    text
}

/// Width and height of a PNG.
pub fn png_dimensions(png: &[u8]) -> (u32, u32) {
    let reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().expect("a valid PNG");
    let info = reader.info();
    (info.width, info.height)
}

/// The text of the QR code in a PNG (any colour type and depth the decoder expands to 8 bits).
pub fn decode_png(png: &[u8]) -> String {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("a valid PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a sane size")];
    let frame = reader.next_frame(&mut buf).expect("the PNG's pixels decode");
    let channels = frame.color_type.samples();
    let (w, h) = (frame.width as usize, frame.height as usize);
    decode_luma(w, h, |x, y| buf[(y * w + x) * channels])
}

/// The text of the QR code in an SVG, rasterized at its own width and height.
pub fn decode_svg(svg: &[u8]) -> String {
    let tree = resvg::usvg::Tree::from_data(svg, &resvg::usvg::Options::default()).expect("a valid SVG");
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).expect("a non-empty SVG");
    resvg::render(&tree, resvg::tiny_skia::Transform::default(), &mut pixmap.as_mut());
    let (w, h) = (size.width() as usize, size.height() as usize);
    let data = pixmap.data();
    // RGBA, premultiplied: a transparent pixel reads as black, so an image that leaves its
    // quiet zone unpainted fails to decode, as it would on a dark page.
    decode_luma(w, h, |x, y| data[(y * w + x) * 4])
}
