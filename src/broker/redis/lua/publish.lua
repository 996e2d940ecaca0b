-- A chat message. ARGV[8]: room, ARGV[9]: the frame body. Returns the id.
return emit(ARGV[8], ARGV[9])
