-- A chat message. KEYS[4]: the room's history; ARGV[6]: the frame body. Returns the id.
return emit(KEYS[4], ARGV[6])
