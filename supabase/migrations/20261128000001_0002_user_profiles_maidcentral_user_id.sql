-- Generated from opsdash/migrations/versions/0002_user_profiles_maidcentral_user_id.py by
-- `python -m opsdash.migrations.supabase`: edit the revision, not this file.

-- Running upgrade 0001 -> 0002

ALTER TABLE user_profiles ADD COLUMN IF NOT EXISTS maidcentral_user_id UUID;

UPDATE user_profiles SET maidcentral_user_id = id WHERE maidcentral_user_id IS NULL;

CREATE UNIQUE INDEX IF NOT EXISTS user_profiles_maidcentral_user_id ON user_profiles (maidcentral_user_id);

UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001';

