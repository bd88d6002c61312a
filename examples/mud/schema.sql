-- SPDX-License-Identifier: Apache-2.0
-- samplex-mud's schema: the world (rooms and exits) and the players.
--
-- This file is compiled into samplex-mud (CMake embeds it) and run at every
-- start, so it must stay idempotent: CREATE ... IF NOT EXISTS, and seed rows
-- with ON CONFLICT DO NOTHING (edit a room here and it is only added, never
-- overwritten). The statements are sent one by one in a single pipelined
-- round trip: a statement ends with ';' at the end of a line, and no other
-- line may end with ';'.

CREATE TABLE IF NOT EXISTS mud_rooms (
    id          text PRIMARY KEY,
    title       text NOT NULL,
    description text NOT NULL,
    ambience    text NOT NULL DEFAULT ''  -- what the world tick shows here
);

CREATE TABLE IF NOT EXISTS mud_exits (
    room_id   text NOT NULL REFERENCES mud_rooms (id),
    direction text NOT NULL
              CHECK (direction IN ('north', 'south', 'east', 'west', 'up', 'down')),
    target_id text NOT NULL REFERENCES mud_rooms (id),
    PRIMARY KEY (room_id, direction)
);

-- One row per player name (canonical: "Alice"). room_id is where the player
-- was when last saved; a room that no longer exists sends them to the square.
CREATE TABLE IF NOT EXISTS mud_players (
    name       text PRIMARY KEY,
    room_id    text NOT NULL,
    logins     integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now(),
    saved_at   timestamptz NOT NULL DEFAULT now()
);

INSERT INTO mud_rooms (id, title, description, ambience) VALUES
    ('square', 'The Town Square',
     'Cobblestones ring a dry fountain. The market lies north, the tavern east, '
     'the temple west and the town gate south.',
     'A pigeon lands on the fountain, looks around, and thinks better of it.'),
    ('market', 'The Market',
     'Empty stalls stand in rows under striped awnings. The square is south.',
     'An awning flaps in the wind like a flag nobody salutes.'),
    ('tavern', 'The Sleeping Loop Tavern',
     'A low room that smells of ale and woodsmoke. A trapdoor leads down; '
     'the square is west.',
     'Somewhere behind the bar, a kettle starts to sing.'),
    ('cellar', 'The Tavern Cellar',
     'Barrels, cobwebs and the steady drip of something you hope is water. '
     'A ladder leads up.',
     'Drip. Drip. Drip. The barrels keep their counsel.'),
    ('temple', 'The Temple of the Ring',
     'Sixteen pillars stand in a circle, each carved with a number. Stairs '
     'climb up to the belfry; the square is east.',
     'Incense smoke drifts between the pillars in a slow, patient ring.'),
    ('belfry', 'The Belfry',
     'A great bronze bell hangs above the rooftops. The stairs lead down.',
     'The bell hums faintly, as if remembering the last time it rang.'),
    ('gate', 'The Town Gate',
     'An iron portcullis, raised and rusted open. The road beyond is not '
     'built yet. The square is north.',
     'A cart rolls by on the road outside, but never quite arrives.')
ON CONFLICT (id) DO NOTHING;

INSERT INTO mud_exits (room_id, direction, target_id) VALUES
    ('square', 'north', 'market'), ('market', 'south', 'square'),
    ('square', 'east', 'tavern'),  ('tavern', 'west', 'square'),
    ('square', 'west', 'temple'),  ('temple', 'east', 'square'),
    ('square', 'south', 'gate'),   ('gate', 'north', 'square'),
    ('tavern', 'down', 'cellar'),  ('cellar', 'up', 'tavern'),
    ('temple', 'up', 'belfry'),    ('belfry', 'down', 'temple')
ON CONFLICT DO NOTHING;
