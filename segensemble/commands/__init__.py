"""One module per subcommand: each adds its parser and a handler that calls one library function."""
