fn main() {
    std::process::exit(pim::cli::run());
}
