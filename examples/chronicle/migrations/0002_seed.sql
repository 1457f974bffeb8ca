-- The chronicle's seed data.
INSERT INTO chronicles (id, name) VALUES (1, 'Chicago by Night'), (2, 'The Long Night in Berlin');
INSERT INTO locations (id, name) VALUES (1, 'Elysium'), (2, 'The Rack'), (3, 'Sewers beneath the Loop'), (4, 'Tiergarten');
INSERT INTO characters (id, chronicle_id, name, clan, concept, description) VALUES
    (1, 1, 'Ada Lovelace', 'Tremere', 'Occult scholar', 'Keeps the chantry''s ledgers in a cipher of her own.'),
    (2, 1, 'Marcus Vale', 'Brujah', 'Union organiser', 'Still fights the battles of 1919.'),
    (3, 1, 'Sister Agnes', 'Malkavian', 'Oracle', 'Hears the city breathe.'),
    (4, 1, 'Tomasz Wr', 'Nosferatu', 'Information broker', 'Sells secrets by the ounce.'),
    (5, 2, 'Liesl Brandt', 'Toreador', 'Cabaret singer', 'Her audience never leaves before dawn.'),
    (6, 2, 'Otto Kern', 'Ventrue', 'Banker', 'Owns the debts of half the Primogen.');
INSERT INTO scenes (id, chronicle_id, location_id, title, date_of_scene) VALUES
    (1, 1, 1, 'Presentation to the Prince', '1999-10-01'),
    (2, 1, 2, 'A Riot on Halsted Street', '1999-10-04'),
    (3, 1, 3, 'What the Rats Know', '1999-10-09'),
    (4, 1, 1, 'The Primogen Convene', '1999-10-15'),
    (5, 2, 4, 'Fog in the Tiergarten', '1989-11-08'),
    (6, 2, 4, 'The Wall Comes Down', '1989-11-09');
INSERT INTO scene_characters (scene_id, character_id) VALUES
    (1, 1), (1, 2), (1, 3), (2, 2), (3, 3), (3, 4), (4, 1), (4, 4), (5, 5), (6, 5), (6, 6);
INSERT INTO merit_flaws (id, name, kind, cost, description) VALUES
    (1, 'Acute Senses', 'Merit', 1, 'One sense is exceptionally sharp.'),
    (2, 'Common Sense', 'Merit', 1, 'The Storyteller warns you of foolish acts.'),
    (3, 'Eidetic Memory', 'Merit', 2, 'You remember everything you see and hear.'),
    (4, 'Iron Will', 'Merit', 3, 'Mind-affecting Disciplines find little purchase.'),
    (5, 'Clan Friendship', 'Merit', 3, 'Members of another clan are well disposed to you.'),
    (6, 'Nine Lives', 'Merit', 6, 'Fate saves you from Final Death, nine times.'),
    (7, 'Nightmares', 'Flaw', 1, 'Every day''s sleep is haunted.'),
    (8, 'Prey Exclusion', 'Flaw', 1, 'You refuse to feed on a certain kind of prey.'),
    (9, 'Short Fuse', 'Flaw', 2, 'Frenzy comes easily.'),
    (10, 'Enemy', 'Flaw', 3, 'Someone wants you gone.'),
    (11, 'Dark Secret', 'Flaw', 1, 'Discovery would be ruinous.'),
    (12, 'Thin Blood', 'Flaw', 4, 'Your Vitae is weak.');
