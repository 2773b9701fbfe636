from snncc.cli import entry

entry()
