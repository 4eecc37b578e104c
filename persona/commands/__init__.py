"""The console scripts, one thin module each (parse, call, report), and the command line they share (cli).
No other module imports them."""
