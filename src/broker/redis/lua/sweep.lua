-- Announces `left` for the partition's users whose leave grace has passed and who did not
-- come back, on any node. Each departure is announced once. ARGV[5]: most to handle.
return sweep(tonumber(ARGV[5]))
