"""One module per noun of the `isthmus` command line; each exposes `add_parser(subparsers, noun, help)`."""
