fn main() -> std::process::ExitCode {
    tsumugi::cli::main()
}
