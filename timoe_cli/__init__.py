"""The `timoe` command line: parse, validate, call timoe_core, print. No logic lives here."""
