-- Redis runs scripts in Lua 5.1 with these globals.
std = "lua51"
read_globals = { "redis", "KEYS", "ARGV", "cjson", "cmsgpack", "bit", "struct" }
max_line_length = 110
-- Contract header lines (`--- @tag value`) are one line each, so that a regex can read them.
max_comment_line_length = false
