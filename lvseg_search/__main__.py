from lvseg_search.cli import entry

entry()
