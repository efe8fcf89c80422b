// include_dir! does not track files added to scripts/ after the first build (include_dir issue 120):
// ask cargo to rerun (and so re-expand the macro) whenever anything under scripts/ changes.
fn main() {
    println!("cargo:rerun-if-changed=scripts");
}
