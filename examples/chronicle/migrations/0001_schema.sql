-- The chronicle's schema. Migrations run once per database (sqlx keeps
-- their record in `_sqlx_migrations`); never edit one that shipped: add one.
CREATE TABLE chronicles (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE locations (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE characters (
    id INTEGER PRIMARY KEY, chronicle_id INTEGER NOT NULL REFERENCES chronicles(id),
    name TEXT NOT NULL, clan TEXT NOT NULL, concept TEXT NOT NULL, description TEXT NOT NULL);
CREATE TABLE scenes (
    id INTEGER PRIMARY KEY, chronicle_id INTEGER NOT NULL REFERENCES chronicles(id),
    location_id INTEGER NOT NULL REFERENCES locations(id),
    title TEXT NOT NULL, date_of_scene TEXT NOT NULL);
CREATE TABLE scene_characters (
    scene_id INTEGER NOT NULL REFERENCES scenes(id),
    character_id INTEGER NOT NULL REFERENCES characters(id),
    PRIMARY KEY (scene_id, character_id));
CREATE TABLE merit_flaws (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL,
    cost INTEGER NOT NULL, description TEXT NOT NULL);
